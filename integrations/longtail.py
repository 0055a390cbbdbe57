"""Long-tail benchmark: cross-entropy vs. HUG on LDAM-style long-tailed training sets.

For every imbalance ratio (the paper's 0.2, 0.1, 0.02, 0.01), method (``ce``: linear head +
cross-entropy; ``hug``: ProxyHead + MHE-HUG) and seed, the job builds the long-tailed training
set of :func:`hug_plugins.longtail.make_longtail` (class ``c`` keeps
``int(n_max * ratio ** (c / (C - 1)))`` images, the first of a shuffle seeded with 0; the test
set stays balanced), trains the same model with the same trainer settings through
:mod:`harness.train`, and reports top-1 test accuracy and many/medium/few-shot accuracy
(more than 100, 20 to 100, fewer than 20 training images per class; both thresholds scaled by
``n_max / 500`` when ``n_max < 500``, see :func:`hug_plugins.longtail.shot_thresholds`), mean ±
std over seeds. Every run is checkpointed (``checkpoint_dir``): a killed job resumes, a
finished run is reloaded instead of retrained.

Usage::

    python integrations/longtail.py --preset quick                    # digits, CPU, ~1 min
    python integrations/longtail.py --preset mnist --data-root /work/shared/data
    python integrations/longtail.py --preset cifar10 --data-root /work/shared/data  # GPU

Writes ``<output_dir>/<output_name>.md`` / ``.csv`` (summary) and ``..._runs.md`` / ``.csv``.
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
from harness.paper import PAPER_TOP1
from harness.tables import standard_header_lines, summarize_runs, write_result_tables
from harness.train import checkpoint_file, fit_pixel_classifier, torch_threads
from omegaconf import DictConfig

from hug_plugins.longtail import (
    SHOT_GROUPS,
    dataset_targets,
    group_accuracies,
    make_longtail,
    per_class_accuracy,
    shot_groups,
    shot_thresholds,
)

TASK = "longtail"
METHODS = {"ce": "CE", "hug": "HUG"}
CE = {"method": "CE"}
PAPER_RATIOS = (0.2, 0.1, 0.02, 0.01)


def run_one(
    method: str,
    ratio: float,
    seed: int,
    cfg: DictConfig,
    data: tuple[Any, Any, PixelDatasetInfo],
    options: dict[str, Any],
    tag: str,
) -> dict[str, Any]:
    """Trains (or reloads) one (method, ratio, seed) and returns its accuracies; ``options``:
    :func:`~harness.config.pixel_fit_options` of the job, ``tag``: its
    :func:`~harness.config.pixel_run_tag` (the checkpoint name's settings hash)."""
    train_full, test, data_info = data
    num_classes = data_info.num_classes
    n_max = None if cfg.longtail_n_max is None else int(cfg.longtail_n_max)
    train = make_longtail(
        train_full, ratio, num_classes=num_classes, n_max=n_max, seed=int(cfg.longtail_seed)
    )
    arch = str(cfg.model.arch)
    ckpt = checkpoint_file(
        cfg.checkpoint_dir, data_info.name, arch, method, seed, ratio=ratio, tag=tag
    )
    model, info = fit_pixel_classifier(
        method, data_info, train, seed=seed, checkpoint=ckpt, **options
    )
    accuracy, support = per_class_accuracy(
        model, test, num_classes, batch_size=int(cfg.eval_batch_size)
    )
    many, few = shot_thresholds(
        max(train.class_counts),
        float(cfg.shots.many),
        float(cfg.shots.few),
        int(cfg.shots.reference_n_max),
    )
    groups = shot_groups(train.class_counts, many, few)
    accs = group_accuracies(accuracy, support, groups)
    out: dict[str, Any] = {f"{k}_acc": 100.0 * v for k, v in accs.items()}
    out.update({f"n_{g}": len(groups[g]) for g in SHOT_GROUPS})
    out.update(info)
    out["train_size"] = len(train)
    out["counts"] = " ".join(str(n) for n in train.class_counts)
    out["thresholds"] = (many, few)
    return out


def run(cfg: DictConfig, argv: Sequence[str]) -> dict[str, Any]:
    """Runs every (ratio, method, seed), writes the tables and returns rows, runs and paths."""
    methods = check_choices("methods", cfg.methods, list(METHODS))
    ratios = [float(r) for r in cfg.ratios]
    seeds = check_seeds(cfg.seeds)
    if not ratios or any(not 0 < r <= 1 for r in ratios):
        raise ValueError(f"ratios must be a non-empty list of numbers in (0, 1], got {ratios}")
    options = pixel_fit_options(cfg)  # validates the trainer section once, here
    tag = pixel_run_tag(cfg, ("longtail_seed", "longtail_n_max"))

    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with torch_threads(cfg.num_threads):
        data = load_job_pixel_data(cfg)
        names = ["ratio", "method", "seed"]
        grid = run_grid(names, ratios, methods, seeds, desc=TASK, enabled=bool(cfg.progress))
        for ratio, method, seed in grid:
            result = run_one(method, ratio, seed, cfg, data, options, tag)
            runs.append({"ratio": ratio, "method": METHODS[method], "seed": seed, **result})
    seconds = time.perf_counter() - started

    columns = ["top1_acc", *(f"{g}_acc" for g in SHOT_GROUPS)]
    paper = PAPER_TOP1.get(str(cfg.data.name), {})
    rows = summarize_runs(
        runs, ["ratio", "method"], columns, paired={"top1_acc": "vs_CE_pp"}, baseline=CE
    )
    for row in rows:
        first = next(r for r in runs if (r["ratio"], r["method"]) == (row["ratio"], row["method"]))
        row["classes many/med/few"] = "/".join(str(first[f"n_{g}"]) for g in SHOT_GROUPS)
        row["train size"] = first["train_size"]
        ref = paper.get(row["method"])
        if ref is not None and row["ratio"] in PAPER_RATIOS:
            row["paper top1"] = ref[PAPER_RATIOS.index(row["ratio"])]

    t = cfg.trainer
    many, few = runs[0]["thresholds"]
    header = [
        *standard_header_lines(argv),
        f"Data: {cfg.data.name} (LDAM long-tail construction of the training set, shuffle seed "
        f"{cfg.longtail_seed}; balanced test set of {len(dataset_targets(data[1]))}); "
        f"model {cfg.model.arch} "
        f"(hidden {cfg.model.hidden}, features {cfg.model.feature_dim}); CE = linear head + "
        f"cross-entropy, HUG = ProxyHead({cfg.hug.proxy_mode}, scale {cfg.hug.scale}) + "
        f"HUG (preset {cfg.hug.preset}). Same trainer for both: {t.epochs} epochs, batch "
        f"{t.batch_size}, {t.optimizer} lr {t.lr}, weight decay {t.weight_decay}, "
        f"{t.scheduler} schedule. Seeds {seeds}. Wall time {seconds:.1f} s.",
        f"Columns: test accuracy % (mean ± std over seeds): top-1 and per shot group of the "
        f"classes by training images: many > {many:g}, medium {few:g}..{many:g}, few < {few:g} "
        f"(the usual 100 / 20 scaled by min(1, n_max / {cfg.shots.reference_n_max})). "
        "vs_CE_pp: paired per-seed top-1 difference to CE (points; positive: HUG better). "
        "Empty group: blank. 'paper top1': the HUG paper's ResNet-32 result (200 epochs) on "
        "CIFAR-10-LT / CIFAR-100-LT for the same ratio, when this is that data set.",
    ]
    stem = Path(str(cfg.output_dir)) / str(cfg.output_name)
    paths = write_result_tables(
        rows,
        runs,
        stem,
        header,
        title=f"Long-tail {cfg.data.name}: CE vs. HUG",
        run_columns=[
            "ratio",
            "method",
            "seed",
            *columns,
            "train_loss",
            "epochs_trained",
            "train_size",
            "counts",
        ],
    )
    print(paths["md"].read_text(encoding="utf-8"))
    return {"rows": rows, "runs": runs, "seconds": seconds, "paths": paths}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point: ``[--preset NAME] [--data-root PATH] [key=value ...]``."""
    return run_job(TASK, run, ["integrations/longtail.py"], argv, doc=__doc__)


if __name__ == "__main__":
    main()
