"""Plots of neural collapse during training: NC1, GNC2, NC3 and NC4 per epoch (matplotlib PNG).

:func:`plot_collapse` draws one panel per metric and one line per method (the mean over seeds,
with a band from the smallest to the largest seed), from the per-epoch history entries that
:class:`harness.train.Trainer` returns. The PNG is rendered off-screen (Agg) and written
atomically.

Example:
    >>> import tempfile, pathlib
    >>> history = [
    ...     {"epoch": 1, "nc1": 2.0, "gnc2_ratio": 1.5, "nc3_dist": 0.9, "nc4_mismatch": 0.3},
    ...     {"epoch": 2, "nc1": 1.0, "gnc2_ratio": 1.2, "nc3_dist": 0.5, "nc4_mismatch": 0.1},
    ... ]
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "nc.png"
    >>> plot_collapse({"CE": [history]}, path, title="demo").read_bytes()[:4]
    b'\\x89PNG'
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.io import atomic_write_bytes

__all__ = ["COLLAPSE_METRICS", "collapse_curves", "plot_collapse"]

COLLAPSE_METRICS: dict[str, str] = {
    "nc1": "NC1  tr(Σ_W Σ_B⁺)/C  (log)",
    "gnc2_ratio": "GNC2  energy / optimum  (1 = uniform)",
    "nc3_dist": "NC3  ‖W/‖W‖ − M/‖M‖‖",
    "nc4_mismatch": "NC4  mismatch with nearest class mean",
}
"""History key -> panel title of the metrics drawn by default."""

_LOG_SCALE = {"nc1", "unit_nc1"}

History = Sequence[Mapping[str, float]]


def collapse_curves(
    histories: Sequence[History], metric: str
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Aggregates one metric over seeds: ``(epochs, mean, low, high)`` per evaluated epoch.

    An epoch enters when at least one history has a finite value for ``metric`` there; the
    mean, minimum and maximum are over the histories that have it.

    Args:
        histories: One per-epoch history (list of entries with ``"epoch"``) per seed.
        metric: The entry key, e.g. ``"nc1"``.

    Returns:
        Four equal-length lists, sorted by epoch.

    Example:
        >>> collapse_curves([[{"epoch": 1, "nc1": 1.0}], [{"epoch": 1, "nc1": 3.0}]], "nc1")
        ([1.0], [2.0], [1.0], [3.0])
    """
    values: dict[float, list[float]] = {}
    for history in histories:
        for entry in history:
            value = entry.get(metric)
            if value is None or "epoch" not in entry or not math.isfinite(float(value)):
                continue
            values.setdefault(float(entry["epoch"]), []).append(float(value))
    epochs = sorted(values)
    means = [sum(values[e]) / len(values[e]) for e in epochs]
    lows = [min(values[e]) for e in epochs]
    highs = [max(values[e]) for e in epochs]
    return epochs, means, lows, highs


def plot_collapse(
    histories: Mapping[str, Sequence[History]],
    path: str | os.PathLike[str],
    *,
    metrics: Mapping[str, str] | None = None,
    title: str | None = None,
    dpi: int = 120,
) -> Path:
    """Draws NC1 / GNC2 / NC3 / NC4 per epoch for several methods into one PNG.

    Args:
        histories: Method name -> one history per seed (lists of per-epoch entries with an
            ``"epoch"`` key and metric keys; entries without a metric are skipped).
        path: Output file (``.png``); parent directories are created; written atomically.
        metrics: History key -> panel title; defaults to :data:`COLLAPSE_METRICS`.
        title: Figure title.
        dpi: Resolution.

    Returns:
        ``path`` as a :class:`pathlib.Path`.

    Raises:
        ValueError: If ``histories`` is empty or holds no value of any metric.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    if not histories:
        raise ValueError("plot_collapse() needs at least one method")
    panels = dict(COLLAPSE_METRICS if metrics is None else metrics)
    if not panels:
        raise ValueError("plot_collapse() needs at least one metric")
    columns = min(2, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(5.0 * columns, 3.4 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    drawn = 0
    for index, (metric, panel_title) in enumerate(panels.items()):
        axis = axes[index // columns][index % columns]
        for method, runs in histories.items():
            epochs, mean, low, high = collapse_curves(runs, metric)
            if not epochs:
                continue
            drawn += 1
            (line,) = axis.plot(
                epochs,
                mean,
                marker="o" if len(epochs) < 15 else None,
                markersize=3,
                label=f"{method} (n={len(runs)})",
            )
            if len(runs) > 1:
                axis.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)
        if metric in _LOG_SCALE and axis.has_data():
            axis.set_yscale("log")
        axis.set_title(panel_title, fontsize=10)
        axis.set_xlabel("epoch")
        axis.grid(True, alpha=0.3)
        if axis.has_data():
            axis.legend(fontsize=8)
    for index in range(len(panels), rows * columns):
        axes[index // columns][index % columns].set_visible(False)
    if drawn == 0:
        raise ValueError(f"no history entry holds any of the metrics {sorted(panels)}")
    if title:
        figure.suptitle(title, fontsize=11)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return atomic_write_bytes(path, buffer.getvalue())
