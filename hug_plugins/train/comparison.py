"""CE against HUG on one backbone: the methods, their seeded models and the summary table.

A comparison trains, per seed, the same backbone and neck (same initialization) with either a
linear head and cross-entropy (``"ce"``) or a :class:`~hug_plugins.proxies.ProxyHead` in one
of its modes and the HUG loss; :func:`summary_rows` reduces the runs to mean ± std over seeds
with the paired per-seed difference to CE.

Example:
    >>> from hug_plugins.data import load_image_dataset
    >>> info = load_image_dataset("digits")[2]
    >>> model, objective = build_comparison_model("learnable", "cnn", info, 0, width=4)
    >>> type(model.head).__name__, type(objective).__name__
    ('ProxyHead', 'HUGObjective')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from hug_plugins.data import DatasetInfo
from hug_plugins.losses import HUGLoss
from hug_plugins.models import build_classifier
from hug_plugins.objectives import CrossEntropyObjective, HUGObjective, Objective
from hug_plugins.tables import COLLAPSE_COLUMNS, summarize
from hug_plugins.train.runtime import seed_everything

__all__ = ["COMPARISON_METHODS", "build_comparison_model", "summary_rows"]

COMPARISON_METHODS = {
    "ce": "CE",
    "learnable": "HUG (learnable)",
    "static_random": "HUG (static random)",
    "static_optimized": "HUG (static optimized)",
    "partial": "HUG (partially learnable)",
}
"""Method keys (``ce`` or a ProxyHead mode) and their display names."""

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
        arch: Backbone name (:data:`hug_plugins.backbones.ARCHITECTURES`).
        info: The dataset's info (classes, channels, channel statistics).
        seed: Seed of the weights and the proxies.
        feature_dim: Neck size (``None``: no neck).
        width: Width of the small CNN.
        channels_last: Channels-last memory format.
        scale: ProxyHead logit scale.
        label_smoothing: Of the cross-entropy.
        hug_preset: HUG preset of the HUG methods.
        hug_overrides: HUG config overrides.

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
        proxy_mode="learnable" if method == "ce" else method,
        scale=scale,
        seed=seed,
        width=width,
        mean=info.mean,
        std=info.std,
        channels_last=channels_last,
    )
    if method == "ce":
        return model, CrossEntropyObjective(label_smoothing=label_smoothing)
    loss = HUGLoss.preset(hug_preset, **dict(hug_overrides or {}))
    return model, HUGObjective(loss, model.head)


def summary_rows(
    combos: Sequence[tuple[str, str, str]],
    runs: Mapping[RunKey, Mapping[str, Any]],
    paper: Mapping[tuple[str, str, str], float] | None = None,
) -> list[dict[str, Any]]:
    """One row per ``(dataset, arch, method)``: test error mean ± std over seeds, the paired
    per-seed difference to CE in percentage points, the paper's number and the collapse
    columns.

    Example:
        >>> runs = {("d", "cnn", m, s): {"test_error": e + s / 100, "loss": 1.0}
        ...         for m, e in (("ce", 0.2), ("learnable", 0.1)) for s in (0, 1)}
        >>> row = summary_rows([("d", "cnn", "learnable")], runs)[0]
        >>> row["method"], round(row["vs_CE_pp"].mean, 6)
        ('HUG (learnable)', -10.0)
    """
    rows: list[dict[str, Any]] = []
    for dataset, arch, method in combos:
        mine = {s: r for (d, a, m, s), r in runs.items() if (d, a, m) == (dataset, arch, method)}
        if not mine:
            continue
        ce = {s: r for (d, a, m, s), r in runs.items() if (d, a, m) == (dataset, arch, "ce")}
        paired = [100.0 * (mine[s]["test_error"] - ce[s]["test_error"]) for s in mine if s in ce]
        row: dict[str, Any] = {
            "dataset": dataset,
            "arch": arch,
            "method": COMPARISON_METHODS[method],
            "seeds": len(mine),
            "test_error_%": summarize([100.0 * r["test_error"] for r in mine.values()]),
            "vs_CE_pp": summarize(paired) if method != "ce" and paired else None,
            "paper_error_%": (paper or {}).get((dataset, arch, method)),
        }
        for column, key in COLLAPSE_COLUMNS.items():
            values = [r[key] for r in mine.values() if key in r]
            row[column] = summarize(values) if values else None
        row["train_loss"] = summarize([r["loss"] for r in mine.values()])
        rows.append(row)
    return rows
