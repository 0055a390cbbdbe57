"""Times HUG against cross-entropy: loss steps, self-supervised criteria, whole training steps.

Usage::

    python integrations/bench_loss.py [--preset default|quick] [key=value ...]

Writes three tables under ``output_dir`` (each rewritten atomically after every row, so a killed
run keeps what it measured):

* ``bench_loss``: one forward+backward step of the loss at each class count ``C``, every
  method measured side by side (interleaved, one fresh process per ``C``), ratios to CE;
  optionally each method's extra peak memory (one fresh process per cell);
* ``bench_ssl``: ``HUGCriterion()`` against lightly's ``NTXentLoss`` at each batch size;
* ``bench_train``: a whole SGD training step (forward, loss, backward, update) of three model
  sizes with a linear head + CE against a ProxyHead + decoupled HUG, ``HUGLoss("pure")``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from harness import benchmark
from harness.config import parse_cli
from harness.tables import standard_header_lines, write_tables
from harness.train.runtime import resolve_device

RATIOS = {
    "hug/ce": "hug",
    "unchecked/ce": "hug_unchecked",
    "eager/ce": "hug_eager",
    "reference/ce": "hug_reference",
    "static/ce": "hug_static",
    "hybrid/ce": "hybrid",
}
COMPILED_RATIO = ("compiled hug/compiled ce", "hug_compiled", "ce_compiled")


def _measure(cfg: Any, target: str, threads: int | None, **kwargs: Any) -> dict[str, Any]:
    kwargs.update(device=str(cfg.device), seed=0)
    if cfg.isolated and cfg.device == "cpu":
        return benchmark.measure_isolated(threads=threads, target=target, **kwargs)
    result: dict[str, Any] = benchmark.MEASUREMENTS[target](**kwargs)
    return result


def loss_rows(cfg: Any, threads: int | None, header: list[str]) -> list[dict[str, Any]]:
    """The loss-step table: one side-by-side measurement per class count."""
    rows: list[dict[str, Any]] = []
    for num_classes in (int(c) for c in cfg.classes):
        methods = [
            m
            for m in cfg.methods
            if not (m == "naive" and num_classes > cfg.naive_max_classes)
            and not (m == "hug_full" and num_classes > cfg.full_max_classes)
        ]
        shape = dict(num_classes=num_classes, batch_size=int(cfg.batch_size), dim=int(cfg.dim))
        try:
            results = _measure(
                cfg, "side_by_side", threads, methods=methods, repeats=int(cfg.repeats),
                warmup=int(cfg.warmup), **shape,
            )  # fmt: skip
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
            print(f"C={num_classes}: failed ({exc})", file=sys.stderr)
            continue
        row: dict[str, Any] = {"C": num_classes}
        row.update({f"{m}_ms": r["ms"] for m, r in results.items()})
        for name, method in RATIOS.items():
            if "ce" in results and method in results:
                row[name] = results[method]["ms"] / results["ce"]["ms"]
        name, hug_c, ce_c = COMPILED_RATIO
        if hug_c in results and ce_c in results:
            row[name] = results[hug_c]["ms"] / results[ce_c]["ms"]
            row["compile_s"] = results[hug_c]["first_s"]
        if "hybrid_compiled" in results and "ce_compiled" in results:
            ratio = results["hybrid_compiled"]["ms"] / results["ce_compiled"]["ms"]
            row["compiled hybrid/compiled ce"] = ratio
        if "naive" in results and "hug" in results:
            row["naive/hug"] = results["naive"]["ms"] / results["hug"]["ms"]
        if cfg.memory:
            for method in methods:
                try:
                    peak = _measure(
                        cfg, "step", threads, method=method, repeats=2, warmup=1, **shape
                    )
                    row[f"{method}_peak_mib"] = peak["peak_mib"]
                except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
                    print(f"C={num_classes} {method} memory: failed ({exc})", file=sys.stderr)
        rows.append(row)
        print(row, flush=True)
        write_tables(rows, Path(cfg.output_dir) / "bench_loss", header, digits=2)
    return rows


def ssl_rows(cfg: Any, threads: int | None, header: list[str]) -> list[dict[str, Any]]:
    """The self-supervised table: HUGCriterion vs NTXentLoss per batch size."""
    rows: list[dict[str, Any]] = []
    for batch_size in (int(b) for b in cfg.ssl_batch_sizes):
        results = _measure(
            cfg, "ssl", threads, batch_size=batch_size, dim=int(cfg.ssl_dim),
            repeats=int(cfg.repeats), warmup=int(cfg.warmup),
        )  # fmt: skip
        ntxent, hug = results["ntxent"]["ms"], results["hug_criterion"]["ms"]
        rows.append(
            {"batch": batch_size, "ntxent_ms": ntxent, "hug_ms": hug, "hug/ntxent": hug / ntxent}
        )
        print(rows[-1], flush=True)
        write_tables(rows, Path(cfg.output_dir) / "bench_ssl", header, digits=2)
    return rows


def train_rows(cfg: Any, threads: int | None, header: list[str]) -> list[dict[str, Any]]:
    """The training-step table: CE vs HUG per model."""
    rows: list[dict[str, Any]] = []
    for model in cfg.train_models:
        results = _measure(
            cfg, "train", threads, model=str(model), num_classes=int(cfg.train_classes),
            batch_size=int(cfg.train_batch_size), repeats=int(cfg.train_repeats),
            warmup=int(cfg.train_warmup),
        )  # fmt: skip
        ce, hug = results["ce"]["ms"], results["hug"]["ms"]
        ce_c, hug_c = results["ce_compiled"]["ms"], results["hug_compiled"]["ms"]
        rows.append(
            {"model": benchmark.TRAIN_MODELS[str(model)], "ce_ms": ce, "hug_ms": hug,
             "overhead_%": 100.0 * (hug / ce - 1.0), "ce_compiled_ms": ce_c,
             "hug_compiled_ms": hug_c, "compiled_overhead_%": 100.0 * (hug_c / ce_c - 1.0),
             "compile_s": results["hug_compiled"]["first_s"]}
        )  # fmt: skip
        print(rows[-1], flush=True)
        write_tables(rows, Path(cfg.output_dir) / "bench_train", header, digits=2)
    return rows


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    cfg = parse_cli(argv, "bench_loss", description=__doc__)
    if cfg.device == "auto":
        cfg.device = resolve_device("auto").type
    threads = None if cfg.num_threads is None else int(cfg.num_threads)
    if threads is not None:
        torch.set_num_threads(threads)
    base = [
        *standard_header_lines(),
        f"Median of {cfg.repeats} steps after {cfg.warmup} warm-up steps per method, methods "
        f"interleaved step by step in one process; device {cfg.device}.",
    ]
    loss_header = [
        *base,
        f"Loss step = forward + backward, B = {cfg.batch_size}, d = {cfg.dim}. ce = nn.Linear + "
        "cross-entropy; hug = HUGLoss('pure') (fused, compiled where set_compile('auto') does); "
        "unchecked = without value checks; eager = fused, never compiled; reference = the "
        "composed path (set_fused(False)); static = static proxies (O(B d) step); hug_full = "
        "full O(C^2 d) energy; naive = the authors' formula as written; ce_compiled / "
        "hug_compiled = the loss compiled whole (torch.compile fullgraph, Inductor), compiled "
        "hug/compiled ce their ratio, compile_s the first compiled HUG step (compilation); "
        "hybrid / hybrid_compiled = HUGLoss(), the default (+ CE on the scaled-cosine logits).",
        "peak = extra peak memory of the step over its inputs (CUDA: max_memory_allocated; "
        "CPU: ru_maxrss in a fresh process).",
    ]
    ssl_header = [
        *base,
        f"Two views of B embeddings, d = {cfg.ssl_dim}, forward + backward: lightly's "
        "NTXentLoss() vs HUGCriterion().",
    ]
    train_header = [
        *base[:-1],
        f"Median of {cfg.train_repeats} steps after {cfg.train_warmup} warm-up steps per method, "
        f"interleaved; one SGD step (forward, loss, backward, update), batch "
        f"{cfg.train_batch_size}, {cfg.train_classes} classes: linear head + CE vs "
        "ProxyHead + HUGLoss('pure'), same backbone weights; *_compiled: model + loss compiled "
        "whole (fullgraph) and torch.compile(optimizer.step), backward through AOTAutograd.",
    ]
    return {
        "loss": loss_rows(cfg, threads, loss_header),
        "ssl": ssl_rows(cfg, threads, ssl_header),
        "train": train_rows(cfg, threads, train_header),
    }


if __name__ == "__main__":
    main()
