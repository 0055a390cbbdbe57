"""Adversarial robustness: clean error and PGD robust accuracy of CE vs. HUG models.

Both models are trained normally (no adversarial training, like the paper) through
:mod:`harness.train`, with a checkpoint per (method, seed): a finished checkpoint is
reloaded instead of retrained (``eval_only=true`` refuses to train at all), so the attack can
be rerun or changed without retraining; a killed run resumes. Inputs are ``[0, 1]`` pixels and
the normalization is the model's first layer.

Attack (:mod:`hug_plugins.robustness`): torchattacks' L-infinity PGD, eps in ``{2, 4, 8}/255``,
20 steps, step size ``2.5 * eps / steps``, random start. It ascends the cross-entropy of the
logits the model outputs: the linear logits for CE, the scaled-cosine proxy logits
``scale * cos(x, w_c)`` for HUG (``attack.losses`` may add ``margin``, the logit-scale-free
margin loss, as a check that a HUG gain is not an artefact of the scale). Robust accuracy is
measured on the same samples as clean accuracy and counts a sample only if it is correct both
clean and attacked. Optional: AutoAttack (``autoattack.enabled=true``).

Usage::

    python integrations/robustness.py --preset quick
    python integrations/robustness.py --preset mnist --data-root /work/shared/data
    python integrations/robustness.py --preset cifar10 --data-root /work/shared/data  # GPU
    python integrations/robustness.py --preset quick eval_only=true attack.losses=[ce,margin]

Writes ``<output_dir>/<output_name>.md`` / ``.csv`` and ``..._runs.md`` / ``.csv``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.config import (
    check_choices,
    check_seeds,
    load_job_pixel_data,
    pixel_fit_options,
    pixel_run_tag,
    run_job,
)
from harness.data import PixelDatasetInfo
from harness.io import run_grid
from harness.paper import paper_robust_rows
from harness.tables import standard_header_lines, summarize_runs, write_result_tables
from harness.train import (
    checkpoint_file,
    find_checkpoint,
    fit_pixel_classifier,
    resolve_device,
    torch_threads,
)
from omegaconf import DictConfig

from hug_plugins.robustness import autoattack_accuracy, evaluate_robustness

TASK = "robustness"
METHODS = {"ce": "CE", "hug": "HUG"}
CE = {"method": "CE"}


def run_one(
    method: str,
    seed: int,
    cfg: DictConfig,
    data: tuple[Any, Any, PixelDatasetInfo],
    job_options: dict[str, Any],
    tag: str,
) -> list[dict[str, Any]]:
    """Trains or reloads one (method, seed) model and attacks it; one row per attack loss
    (``tag``: the job's :func:`~harness.config.pixel_run_tag`, its checkpoints' settings
    hash)."""
    train, test, data_info = data
    name, num_classes = data_info.name, data_info.num_classes
    options = dict(job_options)
    if cfg.checkpoint_pattern:  # models trained by another job: load, never train
        run_name = "ce" if method == "ce" else str(cfg.hug.proxy_mode)
        ckpt = find_checkpoint(str(cfg.checkpoint_pattern), method=run_name, seed=seed)
        options["eval_only"] = True
    else:
        ckpt = checkpoint_file(cfg.checkpoint_dir, name, str(cfg.model.arch), method, seed, tag=tag)
    model, info = fit_pixel_classifier(
        method, data_info, train, seed=seed, checkpoint=ckpt, **options
    )
    device = resolve_device(str(cfg.trainer.device))
    model.to(device)
    eps_values = [float(e) / 255.0 for e in cfg.attack.eps_255]
    a = cfg.attack
    rows: list[dict[str, Any]] = []
    for loss in [str(x) for x in a.losses]:
        start = time.perf_counter()
        result = evaluate_robustness(
            model,
            test,
            eps_values,
            steps=int(a.steps),
            step_factor=float(a.step_factor),
            random_start=bool(a.random_start),
            loss=loss,  # type: ignore[arg-type]
            batch_size=int(a.batch_size),
            max_samples=None if a.max_samples is None else int(a.max_samples),
            seed=seed,
            device=device,
        )
        row: dict[str, Any] = {
            "method": METHODS[method],
            "attack": f"PGD-{loss}",
            "seed": seed,
            "n": result.num_samples,
            "clean_error": 100.0 * result.clean_error,
            "clean_acc": 100.0 * result.clean_accuracy,
        }
        for e255, eps in zip(cfg.attack.eps_255, eps_values, strict=True):
            row[f"robust@{e255:g}/255"] = 100.0 * result.robust_accuracy[eps]
        row["zero_grad_%"] = 100.0 * result.zero_grad_fraction
        row["attack_seconds"] = time.perf_counter() - start
        row.update(info)
        rows.append(row)
    if bool(cfg.autoattack.enabled):
        aa = cfg.autoattack
        start = time.perf_counter()
        row = {"method": METHODS[method], "attack": f"AutoAttack-{aa.version}", "seed": seed}
        for e255 in aa.eps_255:
            acc = autoattack_accuracy(
                model,
                test,
                float(e255) / 255.0,
                num_classes,
                version=str(aa.version),
                batch_size=int(a.batch_size),
                max_samples=None if aa.max_samples is None else int(aa.max_samples),
                seed=seed,
                device=device,
            )
            row[f"robust@{e255:g}/255"] = 100.0 * acc
        row["n"] = min(len(test), int(aa.max_samples)) if aa.max_samples else len(test)
        row["attack_seconds"] = time.perf_counter() - start
        rows.append(row)
    return rows


def run(cfg: DictConfig, argv: Sequence[str]) -> dict[str, Any]:
    """Runs every (method, seed), writes the tables and returns rows, runs and paths."""
    methods = check_choices("methods", cfg.methods, list(METHODS))
    seeds = check_seeds(cfg.seeds)
    bad = [x for x in cfg.attack.losses if x not in ("ce", "margin")]
    if bad or not cfg.attack.losses:
        raise ValueError(f"attack.losses must be a non-empty subset of [ce, margin], got {bad}")
    options = pixel_fit_options(cfg)  # validates the trainer section once, here
    tag = pixel_run_tag(cfg)

    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with torch_threads(cfg.num_threads):
        data = load_job_pixel_data(cfg)
        grid = run_grid(["method", "seed"], methods, seeds, desc=TASK, enabled=bool(cfg.progress))
        for method, seed in grid:
            runs.extend(run_one(method, seed, cfg, data, options, tag))
    seconds = time.perf_counter() - started

    robust = list(dict.fromkeys(k for r in runs for k in r if k.startswith("robust@")))
    metric_cols = ["clean_error", *robust, "zero_grad_%"]
    paired = {"clean_error": "vs_CE_clean_error", **{c: "vs_CE" + c[6:] for c in robust}}
    rows = summarize_runs(runs, ["method", "attack"], metric_cols, paired=paired, baseline=CE)
    for row in rows:
        row["n"] = next(r["n"] for r in runs if r["attack"] == row["attack"])
    rows += [
        r
        for r in paper_robust_rows(str(cfg.data.name))
        if r["method"] in (METHODS[m] for m in methods)
    ]

    t, a = cfg.trainer, cfg.attack
    attacked = "all" if a.max_samples is None else f"a fixed class-stratified {a.max_samples}"
    source = (
        f"Models: the checkpoints {cfg.checkpoint_pattern} (method = ce or the proxy mode), "
        "trained by another job with this recipe. "
        if cfg.checkpoint_pattern
        else ""
    )
    header = [
        *standard_header_lines(argv),
        f"Data: {cfg.data.name} (test samples attacked: {attacked}); model "
        f"{cfg.model.arch} (hidden {cfg.model.hidden}, features {cfg.model.feature_dim}), "
        f"normalization inside the model, inputs in [0, 1]. CE = linear head + cross-entropy; "
        f"HUG = ProxyHead({cfg.hug.proxy_mode}, scale {cfg.hug.scale}) + "
        f"HUG (preset {cfg.hug.preset}); no adversarial training. {source}Trainer: {t.epochs} "
        f"epochs, batch {t.batch_size}, {t.optimizer} lr {t.lr}, weight decay {t.weight_decay}, "
        f"{t.scheduler}. Seeds {seeds}. Wall time {seconds:.1f} s (training + attacks).",
        f"Attack: torchattacks L-inf PGD, {a.steps} steps, step 2.5·eps/{a.steps}, random start "
        f"{a.random_start}. PGD-ce ascends the cross-entropy of the model's logits (HUG: the "
        "scaled-cosine proxy logits); PGD-margin ascends max_{j≠y} z_j − z_y (independent of "
        "the logit scale). Columns in %: clean error; robust accuracy (correct clean AND under "
        "attack, same samples as clean); zero_grad_% = clean-correct samples whose attack-loss "
        "input gradient is exactly 0 (gradient masking); vs_CE*: paired per-seed difference to "
        "CE (points). Mean ± std over seeds.",
    ]
    stem = Path(str(cfg.output_dir)) / str(cfg.output_name)
    paths = write_result_tables(
        rows, runs, stem, header, title=f"Robustness {cfg.data.name}: CE vs. HUG"
    )
    print(paths["md"].read_text(encoding="utf-8"))
    return {"rows": rows, "runs": runs, "seconds": seconds, "paths": paths}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point: ``[--preset NAME] [--data-root PATH] [key=value ...]``."""
    return run_job(TASK, run, ["integrations/robustness.py"], argv, doc=__doc__)


if __name__ == "__main__":
    main()
