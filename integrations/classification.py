"""Image classification: cross-entropy vs. HUG, the paper's two headline tables.

Table "proxies": CE against HUG with fully learnable, static random, static optimized and
partially learnable class proxies (the paper: ResNet-18). Table "architectures": CE against HUG
across backbones (the paper: ResNet-18, VGG-16, DenseNet-121). Both on every dataset listed in
``data.names`` (the paper: CIFAR-10 and CIFAR-100).

Every run trains on the shared loop (:class:`hug_plugins.train.Trainer`) with the same
backbone, optimizer, schedule, epochs, augmentation and seeds; CE and HUG differ only in the
head (``nn.Linear`` vs. :class:`~hug_plugins.proxies.ProxyHead`) and the objective
(:class:`~hug_plugins.objectives.CrossEntropyObjective` vs.
:class:`~hug_plugins.objectives.HUGObjective` with :class:`~hug_plugins.losses.HUGLoss`).
Images are decoded once into memory (:mod:`hug_plugins.data`) and augmented per batch on
the training device (random crop with padding, horizontal flip). After every
``trainer.eval_every`` epochs each run logs the test error and NC1 / GNC2 / NC3 / NC4 on (a
stratified subset of) the un-augmented training set; the job draws them per epoch
(:mod:`hug_plugins.plots`).

Usage::

    python -m integrations.classification --preset quick        # embedded digits, CPU, minutes
    python -m integrations.classification --preset cpu-cifar10 --data-root /work/shared/data
    python -m integrations.classification --preset paper --data-root /data   # GPU
    python -m integrations.classification --preset quick seeds=[0] trainer.epochs=2

Writes, under ``output_dir``: ``<name>.md`` (both tables and the plots), ``<name>_<table>.md`` /
``.csv`` (mean ± std over seeds), ``<name>_runs.md`` / ``.csv`` (one row per run),
``<name>_epochs.csv`` (per-epoch history) and ``<name>_nc_<dataset>_<arch>.png``. With
``checkpoint_dir`` set, every run is checkpointed after each epoch and a re-launched job resumes
(finished runs are only reloaded).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import nn

from hug_plugins.config import check_seeds, run_job, set_values, to_dict
from hug_plugins.data import (
    BatchAugment,
    DatasetInfo,
    ImageTensorDataset,
    load_with_subsets,
)
from hug_plugins.io import atomic_write_text
from hug_plugins.models import ARCHITECTURES
from hug_plugins.objectives import Objective
from hug_plugins.paper import PAPER_ERROR
from hug_plugins.plots import COLLAPSE_METRICS, plot_collapse
from hug_plugins.tables import (
    COLLAPSE_COLUMNS,
    COLLAPSE_NOTE,
    history_csv,
    standard_header_lines,
    write_tables,
)
from hug_plugins.train import (
    Trainer,
    TrainerConfig,
    is_main_process,
    torch_threads,
)
from hug_plugins.train.collapse_fit import fit_tracking_collapse
from hug_plugins.train.comparison import (
    COMPARISON_METHODS,
    build_comparison_model,
    summary_rows,
)

TASK = "classification"

METHODS = COMPARISON_METHODS

TABLES = {
    "proxies": "CE vs. HUG with learnable, static and partially learnable proxies",
    "architectures": "CE vs. HUG across architectures",
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


def build_model(
    method: str, arch: str, info: DatasetInfo, seed: int, cfg: DictConfig
) -> tuple[nn.Module, Objective]:
    """Builds the seeded model and its objective (same backbone init for every method)."""
    m = cfg.model
    return build_comparison_model(
        method,
        arch,
        info,
        seed,
        feature_dim=None if m.feature_dim is None else int(m.feature_dim),
        width=int(m.width),
        channels_last=bool(m.channels_last),
        scale=float(cfg.hug.scale),
        label_smoothing=float(cfg.ce.label_smoothing),
        hug_preset=str(cfg.hug.preset),
        hug_overrides=set_values(cfg.hug.loss),
    )


def _settings_hash(cfg: DictConfig, dataset: str, arch: str) -> str:
    """Short hash of everything that changes a run's result except the method and the seed."""
    data = to_dict(cfg.data)
    data.pop("root", None)  # the same data under another path is the same run
    relevant: dict[str, Any] = {
        "dataset": dataset,
        "arch": arch,
        "data": data,
        "augment": to_dict(cfg.augment),
        "model": to_dict(cfg.model),
        "hug": to_dict(cfg.hug),
        "ce": to_dict(cfg.ce),
        "collapse_samples": cfg.metrics.collapse_samples,  # what the logged history measured
        "collapse_spaces": ["raw", "unit"],  # histories before the unit-space metrics differ
        "trainer": {
            k: v
            for k, v in to_dict(cfg.trainer).items()
            if k not in ("progress", "device", "num_workers", "eval_every")
        },
    }
    text = json.dumps(relevant, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


def load_data(
    name: str, cfg: DictConfig
) -> tuple[ImageTensorDataset, ImageTensorDataset, ImageTensorDataset, DatasetInfo]:
    """Returns ``(train, test, collapse_set, info)`` of a dataset (decoded once per process)."""
    d = cfg.data
    return load_with_subsets(
        name,
        None if d.root is None else str(d.root),
        image_size=None if d.image_size is None else [int(v) for v in d.image_size],
        split_seed=int(d.split_seed),
        test_fraction=float(d.test_fraction),
        train_subset=None if d.train_subset is None else int(d.train_subset),
        test_subset=None if d.test_subset is None else int(d.test_subset),
        collapse_samples=None
        if cfg.metrics.collapse_samples is None
        else int(cfg.metrics.collapse_samples),
    )


def run_one(
    dataset: str,
    arch: str,
    method: str,
    seed: int,
    cfg: DictConfig,
    trainer_cfg: dict[str, Any],
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Trains (or resumes / reloads) one run; returns its final metrics and per-epoch history."""
    train, test, collapse, info = load_data(dataset, cfg)
    model, objective = build_model(method, arch, info, seed, cfg)
    checkpoint = None
    if cfg.checkpoint_dir:
        tag = _settings_hash(cfg, dataset, arch)
        checkpoint = str(
            Path(str(cfg.checkpoint_dir)) / f"{dataset}_{arch}_{method}_seed{seed}_{tag}.pt"
        )
    trainer = Trainer(
        TrainerConfig.from_mapping(trainer_cfg, seed=seed, checkpoint_path=checkpoint)
    )
    progress = ("loss", "test_error", *METRICS.values()) if bool(cfg.progress) else None
    return fit_tracking_collapse(
        trainer,
        model,
        objective,
        train,
        test,
        collapse,
        info.num_classes,
        augment=BatchAugment(int(cfg.augment.crop_padding), bool(cfg.augment.flip)),
        batch_size=int(cfg.metrics.batch_size),
        progress=progress,
    )


def _table_runs(cfg: DictConfig, names: list[str]) -> dict[str, list[tuple[str, str, str]]]:
    """``table -> [(dataset, arch, method), ...]`` for every enabled table."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    for table, spec in cfg.tables.items():
        table = str(table)
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; choose from {sorted(TABLES)}")
        if spec is None or not spec.archs or not spec.methods:
            continue
        archs = [str(a) for a in spec.archs]
        methods = [str(m) for m in spec.methods]
        bad_archs = [a for a in archs if a not in ARCHITECTURES]
        bad_methods = [m for m in methods if m not in METHODS]
        if bad_archs or bad_methods:
            raise ValueError(
                f"tables.{table}: unknown archs {bad_archs} / methods {bad_methods}; "
                f"archs: {list(ARCHITECTURES)}, methods: {list(METHODS)}"
            )
        out[table] = [(d, a, m) for d in names for a in archs for m in methods]
    if not out:
        raise ValueError("no table has both archs and methods; nothing to run")
    return out


def run(cfg: DictConfig, argv: Sequence[str]) -> dict[str, Any]:
    """Runs every (dataset, arch, method, seed) once, writes tables and plots (rank 0)."""
    names = [str(n) for n in cfg.data.names]
    seeds = check_seeds(cfg.seeds)
    if not names:
        raise ValueError("data.names must list at least one dataset")
    tables = _table_runs(cfg, names)
    combos = list(dict.fromkeys(c for combos in tables.values() for c in combos))
    trainer_cfg = to_dict(cfg.trainer)
    TrainerConfig.from_mapping(trainer_cfg)  # fail fast on a bad trainer section

    runs: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    histories: dict[tuple[str, str, str, int], list[dict[str, float]]] = {}
    infos: dict[str, DatasetInfo] = {}
    started = time.perf_counter()
    with torch_threads(cfg.num_threads):
        total = len(combos) * len(seeds)
        for dataset, arch, method in combos:
            if dataset not in infos:
                infos[dataset] = load_data(dataset, cfg)[3]
            for seed in seeds:
                key = (dataset, arch, method, seed)
                if bool(cfg.progress) and is_main_process():
                    print(
                        f"[{len(runs) + 1}/{total}] {dataset} {arch} {METHODS[method]} seed {seed}",
                        file=sys.stderr,
                        flush=True,
                    )
                runs[key], histories[key] = run_one(dataset, arch, method, seed, cfg, trainer_cfg)
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
        f"nearest proxy. Wall time {total_seconds:.1f} s ({total_seconds / 60:.1f} min).",
        "Columns: test error % (mean ± std over seeds, ddof 1); vs_CE_pp = paired per-seed "
        "difference to CE in percentage points (negative: HUG better); paper_error_% = the "
        "poster's number for this dataset/architecture (ResNet-18/VGG-16/DenseNet-121, 200-epoch "
        "scale training; not comparable to reduced budgets). Collapse metrics after the last "
        "epoch, on "
        f"{cfg.metrics.collapse_samples or 'all'} un-augmented training images: " + COLLAPSE_NOTE,
    ]
    stem = Path(str(cfg.output_dir)) / str(cfg.output_name)
    paths: dict[str, Path] = {}
    table_rows: dict[str, list[dict[str, Any]]] = {}
    digits = {
        "test_error_%": 2,
        "vs_CE_pp": 2,
        "paper_error_%": 2,
        "nc1": 3,
        "gnc2": 3,
        "nc3": 3,
        "nc4": 4,
        "nc1_unit": 3,
        "nc4_unit": 4,
        "train_loss": 4,
    }
    for table, table_combos in tables.items():
        table_rows[table] = summary_rows(table_combos, runs, PAPER_ERROR)
    if is_main_process():
        sections: list[str] = []
        for table, rows in table_rows.items():
            md, csv_path = write_tables(
                rows,
                stem.with_name(f"{stem.name}_{table}"),
                header,
                digits=digits,
                title=f"Classification: {TABLES[table]}",
            )
            paths[f"{table}_md"], paths[f"{table}_csv"] = md, csv_path
            sections.append(md.read_text(encoding="utf-8"))
        run_rows = [
            {
                "dataset": k[0],
                "arch": k[1],
                "method": METHODS[k[2]],
                "seed": k[3],
                "test_error_%": 100.0 * r["test_error"],
                **{c: r.get(key) for c, key in METRICS.items()},
                "train_loss": r["loss"],
                "seconds": r["seconds"],
                "resumed_from_epoch": int(r["resumed_from_epoch"]),
            }
            for k, r in runs.items()
        ]
        paths["runs_md"], paths["runs_csv"] = write_tables(
            run_rows,
            stem.with_name(stem.name + "_runs"),
            header,
            digits=digits,
            title="Classification: every run",
        )
        paths["epochs_csv"] = atomic_write_text(
            stem.with_name(stem.name + "_epochs.csv"),
            history_csv(histories, ("dataset", "arch", "method", "seed")),
        )
        plots: list[Path] = []
        for dataset, arch in dict.fromkeys((c[0], c[1]) for c in combos):
            per_method = {
                METHODS[k[2]]: [h for kk, h in histories.items() if kk[:3] == k[:3]]
                for k in histories
                if k[:2] == (dataset, arch)
            }
            png = stem.with_name(f"{stem.name}_nc_{dataset}_{arch}.png")
            plots.append(
                plot_collapse(
                    per_method,
                    png,
                    metrics=PLOTTED,
                    title=f"Neural collapse per epoch: {dataset}, {arch} (train features)",
                )
            )
            paths[f"plot_{dataset}_{arch}"] = png
        images = "\n".join(f"![{p.stem}]({p.name})" for p in plots)
        combined = "\n\n".join(sections) + "\n## Collapse per epoch\n\n" + images + "\n"
        paths["md"] = atomic_write_text(stem.with_name(stem.name + ".md"), combined)
        print(combined)
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
        TASK, run, ["-m", "integrations.classification"], argv, doc=__doc__, distributed=True
    )


if __name__ == "__main__":
    main()
