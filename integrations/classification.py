"""Image classification: cross-entropy vs. HUG, the paper's two headline tables and ours.

Table "proxies": CE against HUG with fully learnable, static random, static optimized and
partially learnable class proxies (the paper: ResNet-18). Table "architectures": CE against HUG
across backbones (the paper: ResNet-18, VGG-16, DenseNet-121). Table "recipes": CE against
HUG's recipes with learnable proxies: the job's recipe (``hug.preset``, the calibrated default),
the paper's sum form with its weights (``paper``, preset ``"mhe_sum"``) and the job's recipe
plus cross-entropy on the scaled-cosine logits (``hybrid``, ``ce_weight`` 1). Each table on
every dataset listed in ``data.names`` (the paper: CIFAR-10 and CIFAR-100).

Every run trains on the shared loop (:class:`harness.train.Trainer`) with the same
backbone, optimizer, schedule, epochs, augmentation and seeds; CE and HUG differ only in the
head (``nn.Linear`` vs. :class:`~hug_plugins.proxies.ProxyHead`) and the objective
(:class:`~harness.objectives.CrossEntropyObjective` vs.
:class:`~harness.objectives.HUGObjective` with :class:`~hug_plugins.losses.HUGLoss`).
Images are decoded once into memory (:mod:`harness.data`) and augmented per batch on
the training device (random crop with padding, horizontal flip). After every
``trainer.eval_every`` epochs each run logs the test error and NC1 / GNC2 / NC3 / NC4 on (a
stratified subset of) the un-augmented training set; the job draws them per epoch
(:mod:`harness.plots`).

Usage::

    python integrations/classification.py --preset quick        # embedded digits, CPU, minutes
    python integrations/classification.py --preset cpu-cifar10 --data-root /work/shared/data
    python integrations/classification.py --preset paper --data-root /data   # GPU
    python integrations/classification.py --preset quick seeds=[0] trainer.epochs=2

Writes, under ``output_dir``: ``<name>.md`` (both tables and the plots), ``<name>_<table>.md`` /
``.csv`` (mean ± std over seeds), ``<name>_runs.md`` / ``.csv`` (one row per run),
``<name>_epochs.csv`` (per-epoch history) and ``<name>_nc_<dataset>_<arch>.png``. With
``checkpoint_dir`` set, every run is checkpointed after each epoch and a re-launched job resumes
(finished runs are only reloaded).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.config import check_seeds, run_job, set_values, to_dict
from harness.data import DatasetInfo
from harness.paper import PAPER_ERROR
from harness.plots import COLLAPSE_METRICS
from harness.reports import summary_rows, write_comparison_report
from harness.tables import COLLAPSE_COLUMNS, COLLAPSE_NOTE, standard_header_lines
from harness.train import TrainerConfig, is_main_process, torch_threads
from harness.train.comparison import (
    COMPARISON_METHODS,
    HYBRID_CE_WEIGHT,
    PAPER_FORM_PRESET,
    comparison_data,
    comparison_plan,
    fit_comparison_run,
)
from omegaconf import DictConfig

TASK = "classification"

METHODS = COMPARISON_METHODS

TABLES = {
    "proxies": "CE vs. HUG with learnable, static and partially learnable proxies",
    "architectures": "CE vs. HUG across architectures",
    "recipes": "CE vs. HUG recipes: the calibrated default, the paper's form and the CE hybrid",
}
"""Table keys accepted under ``tables`` and their titles."""


METRICS = COLLAPSE_COLUMNS
"""Reported collapse column -> key in the history entries."""

PLOTTED = {
    **COLLAPSE_METRICS,
    "unit_nc1": "NC1 on x/‖x‖  (log)",
    "unit_nc4_mismatch": "NC4 on x/‖x‖ (the space HUG predicts in)",
}
"""History key -> panel title of the per-epoch plot."""

DIGITS = {
    **{c: 2 for c in ("test_error_%", "vs_CE_pp", "paper_error_%")},
    **{c: 3 for c in ("nc1", "gnc2", "nc3", "nc1_unit")},
    **{c: 4 for c in ("nc4", "nc4_unit", "train_loss")},
}
"""Markdown digits per column."""


def _recipe_note(combos: Sequence[tuple[str, str, str]], preset: str) -> str:
    """What the recipe methods in ``combos`` train with (empty when none runs)."""
    methods = {method for _, _, method in combos}
    notes = []
    if "paper" in methods:
        notes.append(f"paper form: learnable proxies + HUGLoss preset '{PAPER_FORM_PRESET}'")
    if "hybrid" in methods:
        notes.append(f"hybrid: learnable proxies + preset '{preset}' + {HYBRID_CE_WEIGHT} x CE")
    return "".join(f"; {note}" for note in notes)


def run(cfg: DictConfig, argv: Sequence[str]) -> dict[str, Any]:
    """Runs every (dataset, arch, method, seed) once, writes tables and plots (rank 0)."""
    names = [str(n) for n in cfg.data.names]
    seeds = check_seeds(cfg.seeds)
    if not names:
        raise ValueError("data.names must list at least one dataset")
    job = to_dict(cfg)
    tables = comparison_plan(job["tables"], TABLES, names)
    combos = list(dict.fromkeys(c for combos in tables.values() for c in combos))
    trainer = TrainerConfig.from_mapping(job["trainer"])  # validated once, here
    progress = ("loss", "test_error", *METRICS.values()) if bool(cfg.progress) else None

    runs: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    histories: dict[tuple[str, str, str, int], list[dict[str, float]]] = {}
    infos: dict[str, DatasetInfo] = {}
    started = time.perf_counter()
    with torch_threads(cfg.num_threads):
        total = len(combos) * len(seeds)
        for dataset, arch, method in combos:
            if dataset not in infos:
                infos[dataset] = comparison_data(dataset, job)[3]
            for seed in seeds:
                key = (dataset, arch, method, seed)
                if bool(cfg.progress) and is_main_process():
                    print(
                        f"[{len(runs) + 1}/{total}] {dataset} {arch} {METHODS[method]} seed {seed}",
                        file=sys.stderr,
                        flush=True,
                    )
                runs[key], histories[key] = fit_comparison_run(*key, job, progress, trainer)
    total_seconds = time.perf_counter() - started

    t, m, d = cfg.trainer, cfg.model, cfg.data
    data_lines = []
    for name, info in infos.items():
        train_size = d.train_subset if d.train_subset is not None else "all"
        data_lines.append(
            f"{name} ({info.source}; {info.num_classes} classes, "
            f"{info.in_channels}x{info.image_size[0]}x{info.image_size[1]}; "
            f"training subset: {train_size}; test subset: "
            f"{d.test_subset if d.test_subset is not None else 'all'})"
        )
    loss_overrides = set_values(cfg.hug.loss)
    header = [
        *standard_header_lines(argv),
        f"Data: {'; '.join(data_lines)}. Augmentation: random crop (zero padding "
        f"{cfg.augment.crop_padding}), horizontal flip {bool(cfg.augment.flip)}.",
        f"Training (identical for every method): {len(seeds)} seeds {seeds}; {t.epochs} epochs, "
        f"batch {t.batch_size}, {t.optimizer} lr {t.lr} momentum {t.momentum} weight decay "
        f"{t.weight_decay}, {t.scheduler} schedule, {t.warmup_epochs} warm-up epochs, "
        f"amp {t.amp}. Models: CIFAR-adapted backbones + linear neck to {m.feature_dim} "
        f"features (cnn width {m.width}); CE: linear head + cross-entropy; HUG: "
        f"ProxyHead(mode = the method, scale {cfg.hug.scale}) + HUGLoss preset "
        f"'{cfg.hug.preset}' with {loss_overrides or 'its default weights'}, prediction = "
        f"nearest proxy{_recipe_note(combos, str(cfg.hug.preset))}. "
        f"Wall time {total_seconds:.1f} s ({total_seconds / 60:.1f} min).",
        "Columns: test error % (mean ± std over seeds, ddof 1); vs_CE_pp = paired per-seed "
        "difference to CE in percentage points (negative: HUG better); paper_error_% = the "
        "poster's number for this dataset/architecture (ResNet-18/VGG-16/DenseNet-121, 200-epoch "
        "scale training; not comparable to reduced budgets). Collapse metrics after the last "
        "epoch, on "
        f"{cfg.metrics.collapse_samples or 'all'} un-augmented training images: " + COLLAPSE_NOTE,
    ]
    table_rows = {name: summary_rows(c, runs, PAPER_ERROR) for name, c in tables.items()}
    paths: dict[str, Path] = {}
    if is_main_process():
        paths, page = write_comparison_report(
            table_rows,
            TABLES,
            runs,
            histories,
            Path(str(cfg.output_dir)) / str(cfg.output_name),
            header,
            method_names=METHODS,
            run_metrics=METRICS,
            plotted=PLOTTED,
            digits=DIGITS,
        )
        print(page)
    return {
        "tables": table_rows,
        "runs": runs,
        "histories": histories,
        "paths": paths,
        "seconds": total_seconds,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point: ``[--preset NAME] [--data-root PATH] [key=value ...]``."""
    return run_job(
        TASK, run, ["integrations/classification.py"], argv, doc=__doc__, distributed=True
    )


if __name__ == "__main__":
    main()
