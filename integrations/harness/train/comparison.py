"""CE against HUG on one backbone: the methods, their seeded models and the job's runs.

A comparison trains, per seed, the same backbone and neck (same initialization) with either a
linear head and cross-entropy (``"ce"``) or a :class:`~hug_plugins.proxies.ProxyHead` in one
of its modes and the HUG loss; :func:`harness.reports.summary_rows` reduces the runs to
mean ± std over seeds with the paired per-seed difference to CE.

Example:
    >>> from harness.data import load_image_dataset
    >>> info = load_image_dataset("digits")[2]
    >>> model, objective = build_comparison_model("learnable", "cnn", info, 0, width=4)
    >>> type(model.head).__name__, type(objective).__name__
    ('ProxyHead', 'HUGObjective')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from harness.data import BatchAugment, DatasetInfo, ImageTensorDataset, load_with_subsets
from harness.models import ARCHITECTURES, build_classifier
from harness.objectives import CrossEntropyObjective, HUGObjective, Objective
from harness.train.checkpoints import settings_tag
from harness.train.collapse_fit import fit_tracking_collapse
from harness.train.config import TrainerConfig
from harness.train.runtime import seed_everything
from harness.train.trainer import Trainer
from hug_plugins.losses import HUGConfig, HUGLoss, preset_config

__all__ = [
    "COMPARISON_METHODS",
    "HYBRID_CE_WEIGHT",
    "PAPER_FORM_PRESET",
    "PROXY_METHODS",
    "RECIPE_METHODS",
    "build_comparison_model",
    "comparison_checkpoint",
    "comparison_data",
    "comparison_model",
    "comparison_plan",
    "comparison_recipe",
    "fit_comparison_run",
]

PROXY_METHODS = {
    "ce": "CE",
    "learnable": "HUG (learnable)",
    "static_random": "HUG (static random)",
    "static_optimized": "HUG (static optimized)",
    "partial": "HUG (partially learnable)",
}
"""``ce`` and the HUG methods named by their ProxyHead mode (the job's HUG recipe)."""

RECIPE_METHODS = {
    "paper": "HUG (paper form, learnable)",
    "hybrid": "HUG (hybrid with CE, learnable)",
    "pure": "HUG (pure: no CE term, learnable)",
}
"""HUG methods with learnable proxies and a recipe of their own: ``paper`` is the poster's sum
form with its weights (preset ``"mhe_sum"``, whatever the job's recipe); ``hybrid`` is the
job's recipe with :data:`HYBRID_CE_WEIGHT` x cross-entropy on the scaled-cosine logits (the
job's recipe itself when it is ``HUGLoss()``'s, preset ``"default"``); ``pure`` is the job's
recipe without that term (decoupled HUG)."""

HYBRID_CE_WEIGHT = 1.0
"""``ce_weight`` of the ``hybrid`` method."""

PAPER_FORM_PRESET = "mhe_sum"
"""HUG preset of the ``paper`` method."""

COMPARISON_METHODS = {**PROXY_METHODS, **RECIPE_METHODS}
"""Method keys and their display names."""

RunKey = tuple[str, str, str, int]
"""``(dataset, arch, method, seed)``."""


def build_comparison_model(
    method: str,
    arch: str,
    info: DatasetInfo,
    seed: int,
    *,
    feature_dim: int | None = 128,
    width: int = 32,
    channels_last: bool = False,
    scale: float = 16.0,
    label_smoothing: float = 0.0,
    hug_preset: str = "default",
    hug_overrides: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, Objective]:
    """The seeded model of ``method`` and its objective (same backbone init for every method).

    Args:
        method: A key of :data:`COMPARISON_METHODS`.
        arch: Backbone name (:data:`harness.backbones.ARCHITECTURES`).
        info: The dataset's info (classes, channels, channel statistics).
        seed: Seed of the weights and the proxies.
        feature_dim: Neck size (``None``: no neck).
        width: Width of the small CNN.
        channels_last: Channels-last memory format.
        scale: ProxyHead logit scale.
        label_smoothing: Of the cross-entropy.
        hug_preset: HUG preset of the HUG methods (not of ``paper``).
        hug_overrides: HUG config overrides (not of ``paper``).

    Returns:
        ``(model, objective)``.
    """
    if method not in COMPARISON_METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(COMPARISON_METHODS)}")
    seed_everything(seed)
    model = build_classifier(
        arch,
        info.num_classes,
        info.in_channels,
        feature_dim=feature_dim,
        head="linear" if method == "ce" else "proxy",
        proxy_mode=method if method in PROXY_METHODS and method != "ce" else "learnable",
        scale=scale,
        seed=seed,
        width=width,
        mean=info.mean,
        std=info.std,
        channels_last=channels_last,
    )
    recipe = comparison_recipe(method, hug_preset, hug_overrides)
    if recipe is None:
        return model, CrossEntropyObjective(label_smoothing=label_smoothing)
    return model, HUGObjective(HUGLoss(recipe), model.head)


def comparison_recipe(
    method: str, hug_preset: str = "default", hug_overrides: Mapping[str, Any] | None = None
) -> HUGConfig | None:
    """The HUG configuration ``method`` trains with (``None`` for ``"ce"``): the job's recipe
    (``hug_preset`` + ``hug_overrides``) for the proxy modes, :data:`PAPER_FORM_PRESET` for
    ``"paper"``, the job's recipe + :data:`HYBRID_CE_WEIGHT` x CE for ``"hybrid"``.

    Example:
        >>> comparison_recipe("paper", "default", {"alpha": 3.0}).reduction
        'sum'
        >>> comparison_recipe("hybrid", "pure", {"alpha": 3.0}).ce_weight
        1.0
        >>> comparison_recipe("pure", "default").ce_weight
        0.0
    """
    if method not in COMPARISON_METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(COMPARISON_METHODS)}")
    if method == "ce":
        return None
    if method == "paper":
        return preset_config(PAPER_FORM_PRESET)
    overrides = dict(hug_overrides or {})
    if method == "hybrid":
        overrides["ce_weight"] = HYBRID_CE_WEIGHT
    elif method == "pure":
        overrides["ce_weight"] = 0.0
    return preset_config(hug_preset, **overrides)


# ----------------------------------------------------------------------------- the job's runs
# The functions below read the classification job's config (``configs/classification/*.yaml``)
# as plain mappings (``harness.config.to_dict``; an OmegaConf ``DictConfig`` works too).


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def comparison_data(
    name: str, job: Mapping[str, Any]
) -> tuple[ImageTensorDataset, ImageTensorDataset, ImageTensorDataset, DatasetInfo]:
    """``(train, test, collapse_set, info)`` of dataset ``name`` under the job's ``data`` and
    ``metrics.collapse_samples`` settings (decoded once per process)."""
    d = job["data"]
    return load_with_subsets(
        name,
        None if d["root"] is None else str(d["root"]),
        image_size=None if d["image_size"] is None else [int(v) for v in d["image_size"]],
        split_seed=int(d["split_seed"]),
        test_fraction=float(d["test_fraction"]),
        train_subset=_opt_int(d["train_subset"]),
        test_subset=_opt_int(d["test_subset"]),
        collapse_samples=_opt_int(job["metrics"]["collapse_samples"]),
    )


def _set_overrides(hug: Mapping[str, Any]) -> dict[str, Any]:
    """The job's ``hug.loss`` overrides that are set (null: the preset's value)."""
    return {str(k): v for k, v in (hug["loss"] or {}).items() if v is not None}


def comparison_model(
    method: str, arch: str, info: DatasetInfo, seed: int, job: Mapping[str, Any]
) -> tuple[nn.Module, Objective]:
    """:func:`build_comparison_model` with the job's ``model``, ``hug`` and ``ce`` settings."""
    m, hug = job["model"], job["hug"]
    return build_comparison_model(
        method,
        arch,
        info,
        seed,
        feature_dim=_opt_int(m["feature_dim"]),
        width=int(m["width"]),
        channels_last=bool(m["channels_last"]),
        scale=float(hug["scale"]),
        label_smoothing=float(job["ce"]["label_smoothing"]),
        hug_preset=str(hug["preset"]),
        hug_overrides=_set_overrides(hug),
    )


def _plain(value: Any) -> Any:
    """Plain containers of a (possibly OmegaConf) mapping, for hashing."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    return value


def comparison_checkpoint(
    job: Mapping[str, Any], dataset: str, arch: str, method: str, seed: int
) -> str | None:
    """The run's checkpoint under ``checkpoint_dir`` (``None``: disabled), named with a hash of
    every setting that changes its result except the method and the seed, and of the HUG
    recipe the method resolves to (:func:`comparison_recipe`: a new default recipe is a new
    run, not a reloaded one)."""
    if not job["checkpoint_dir"]:
        return None
    hug = job["hug"]
    recipe = comparison_recipe(method, str(hug["preset"]), _set_overrides(hug))
    data = {k: v for k, v in _plain(job["data"]).items() if k != "root"}  # any path, same data
    skip = ("progress", "device", "num_workers", "eval_every")
    trainer = {k: v for k, v in _plain(job["trainer"]).items() if k not in skip}
    tag = settings_tag(
        {
            "dataset": dataset,
            "arch": arch,
            "data": data,
            **{key: _plain(job[key]) for key in ("augment", "model", "hug", "ce")},
            "collapse_samples": job["metrics"]["collapse_samples"],  # what the history measured
            "collapse_spaces": ["raw", "unit"],  # older histories lack the unit-space metrics
            "trainer": trainer,
            "recipe": None if recipe is None else dataclasses.asdict(recipe),
        }
    )
    return str(Path(str(job["checkpoint_dir"])) / f"{dataset}_{arch}_{method}_seed{seed}_{tag}.pt")


def fit_comparison_run(
    dataset: str,
    arch: str,
    method: str,
    seed: int,
    job: Mapping[str, Any],
    progress: Sequence[str] | None = None,
    trainer_config: TrainerConfig | None = None,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Trains (or resumes / reloads) one run of the job; returns its final metrics and its
    per-epoch history (:func:`~harness.train.collapse_fit.fit_tracking_collapse`).

    ``trainer_config`` is the job's validated trainer section (``None``: built from
    ``job["trainer"]``); the run's seed and checkpoint replace its own."""
    train, test, collapse, info = comparison_data(dataset, job)
    model, objective = comparison_model(method, arch, info, seed, job)
    checkpoint = comparison_checkpoint(job, dataset, arch, method, seed)
    base = trainer_config or TrainerConfig.from_mapping(job["trainer"])
    trainer = Trainer(dataclasses.replace(base, seed=seed, checkpoint_path=checkpoint))
    augment = job["augment"]
    return fit_tracking_collapse(
        trainer,
        model,
        objective,
        train,
        test,
        collapse,
        info.num_classes,
        augment=BatchAugment(int(augment["crop_padding"]), bool(augment["flip"])),
        batch_size=int(job["metrics"]["batch_size"]),
        progress=progress,
    )


def comparison_plan(
    tables: Mapping[str, Any], titles: Mapping[str, str], datasets: Sequence[str]
) -> dict[str, list[tuple[str, str, str]]]:
    """``table -> [(dataset, arch, method), ...]`` of every table with archs and methods.

    Raises:
        ValueError: For an unknown table, arch or method, or when no table has both.

    Example:
        >>> comparison_plan({"t": {"archs": ["cnn"], "methods": ["ce"]}}, {"t": "T"}, ["d"])
        {'t': [('d', 'cnn', 'ce')]}
    """
    out: dict[str, list[tuple[str, str, str]]] = {}
    for table, spec in tables.items():
        table = str(table)
        if table not in titles:
            raise ValueError(f"unknown table {table!r}; choose from {sorted(titles)}")
        if spec is None or not spec["archs"] or not spec["methods"]:
            continue
        archs = [str(a) for a in spec["archs"]]
        methods = [str(m) for m in spec["methods"]]
        bad_archs = [a for a in archs if a not in ARCHITECTURES]
        bad_methods = [m for m in methods if m not in COMPARISON_METHODS]
        if bad_archs or bad_methods:
            raise ValueError(
                f"tables.{table}: unknown archs {bad_archs} / methods {bad_methods}; "
                f"archs: {list(ARCHITECTURES)}, methods: {list(COMPARISON_METHODS)}"
            )
        out[table] = [(d, a, m) for d in datasets for a in archs for m in methods]
    if not out:
        raise ValueError("no table has both archs and methods; nothing to run")
    return out
