"""Times one forward+backward step of P-HUG against nn.Linear + cross-entropy and the naive form.

Usage::

    python integrations/bench_loss.py [--preset default|quick] [key=value ...]

Writes ``<out_dir>/bench_loss.md`` and ``.csv`` (rewritten atomically after every cell, so a
killed run keeps what it measured). Ratios compare methods measured in the same run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from hug_plugins.benchmark import measure_isolated, measure_loss_step
from hug_plugins.config import parse_cli
from hug_plugins.io import standard_header_lines, write_tables

FIELDS = ("ms", "peak_mib")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    cfg = parse_cli(argv, "bench_loss", description=__doc__)
    device = str(cfg.device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = int(cfg.threads) or None
    if threads:
        torch.set_num_threads(threads)
    header = [
        *standard_header_lines(),
        f"Step = forward + backward, B = {cfg.batch_size}, d = {cfg.dim}, median of "
        f"{cfg.repeats} steps after {cfg.warmup} warm-up steps, device {device}.",
        "peak = extra peak memory of the step over its inputs and parameters "
        "(CUDA: max_memory_allocated; CPU: ru_maxrss in a fresh process).",
        "hug = MHE-HUG preset in its default energy mode (auto: full if C <= B else rows); "
        "hug_unchecked = the same with set_validation(False) (no device read per step); "
        "hug_full = full O(C^2 d) energy; naive = the authors' formula as written "
        "(per-class loop, full cdist). 'extrap.' = quadratic extrapolation from the largest "
        "measured C.",
    ]
    rows: list[dict[str, Any]] = []
    measured_naive: tuple[int, float] | None = None
    for num_classes in cfg.classes:
        row: dict[str, Any] = {"C": int(num_classes)}
        results: dict[str, dict[str, Any]] = {}
        for method in cfg.methods:
            too_big = (method == "naive" and num_classes > cfg.naive_max_classes) or (
                method == "hug_full" and num_classes > cfg.full_max_classes
            )
            if too_big:
                continue
            kwargs = dict(
                method=method,
                num_classes=int(num_classes),
                batch_size=int(cfg.batch_size),
                dim=int(cfg.dim),
                device=device,
                repeats=int(cfg.repeats),
                warmup=int(cfg.warmup),
            )
            try:
                if cfg.isolated and device == "cpu":
                    results[method] = measure_isolated(threads=threads, **kwargs)
                else:
                    results[method] = measure_loss_step(**kwargs)
            except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
                print(f"C={num_classes} {method}: failed ({exc})", file=sys.stderr)
        for method, res in results.items():
            row[f"{method}_ms"] = res["ms"]
            row[f"{method}_peak_mib"] = res["peak_mib"]
        if "ce" in results and "hug" in results:
            row["hug/ce"] = results["hug"]["ms"] / results["ce"]["ms"]
        if "ce" in results and "hug_unchecked" in results:
            row["unchecked/ce"] = results["hug_unchecked"]["ms"] / results["ce"]["ms"]
        if "naive" in results and "hug" in results:
            row["naive/hug"] = results["naive"]["ms"] / results["hug"]["ms"]
            measured_naive = (int(num_classes), results["naive"]["peak_mib"])
        elif "naive" in cfg.methods and measured_naive is not None:
            base_c, base_mib = measured_naive
            row["naive_peak_mib"] = f"{base_mib * (num_classes / base_c) ** 2:.0f} (extrap.)"
        rows.append(row)
        print(row, flush=True)
        write_tables(rows, Path(cfg.out_dir) / "bench_loss", header, digits=2)
    return rows


if __name__ == "__main__":
    main()
