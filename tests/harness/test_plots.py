"""Tests of harness.plots: per-epoch NC1/GNC2/NC3/NC4 figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from harness.plots import COLLAPSE_METRICS, collapse_curves, plot_collapse
from PIL import Image


def _history(offset: float, epochs: int = 4) -> list[dict[str, float]]:
    return [
        {
            "epoch": e,
            "loss": 1.0 / e,
            "nc1": 2.0 / e + offset,
            "gnc2_ratio": 1.0 + 0.5 / e,
            "nc3_dist": 1.0 / e,
            "nc4_mismatch": 0.2 / e,
        }
        for e in range(1, epochs + 1)
    ]


def test_collapse_curves_mean_and_band_over_seeds() -> None:
    epochs, mean, low, high = collapse_curves([_history(0.0), _history(1.0)], "nc1")
    assert epochs == [1.0, 2.0, 3.0, 4.0]
    assert mean[0] == pytest.approx(2.5) and low[0] == 2.0 and high[0] == 3.0


def test_collapse_curves_skip_missing_and_nonfinite_values() -> None:
    history = [
        {"epoch": 1, "loss": 1.0},
        {"epoch": 2, "nc1": float("nan")},
        {"epoch": 3, "nc1": 1.0},
    ]
    assert collapse_curves([history], "nc1") == ([3.0], [1.0], [1.0], [1.0])


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def _has_curve(region: np.ndarray) -> bool:
    """Whether a panel holds coloured (drawn data) pixels: axes, ticks and text are grey."""
    saturation = region.max(axis=2) - region.min(axis=2)
    return int((saturation > 80).sum()) > 50


def test_plot_collapse_draws_every_panel_from_the_data(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "nc.png"
    histories = {"CE": [_history(0.0), _history(0.5)], "HUG": [_history(-0.5)]}
    out = plot_collapse(histories, path, title="t", dpi=100)
    assert out == path and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(path.parent.glob(".*.tmp"))  # atomic write leaves no temporary file
    pixels = _pixels(path)
    assert pixels.shape == (680, 1000, 3)  # 2 x 2 panels of 5.0 x 3.4 inches at 100 dpi
    height, width = pixels.shape[0] // 2, pixels.shape[1] // 2
    for row in range(2):
        for column in range(2):
            panel = pixels[row * height : (row + 1) * height, column * width : (column + 1) * width]
            assert _has_curve(panel), (row, column)
    other = plot_collapse({"CE": [_history(3.0)]}, tmp_path / "other.png", title="t", dpi=100)
    assert not np.array_equal(_pixels(other), pixels)  # the picture follows the data


def test_plot_collapse_with_partial_metrics_and_custom_panels(tmp_path: Path) -> None:
    only_nc1 = [[{"epoch": 1, "nc1": 1.0}, {"epoch": 2, "nc1": 0.5}]]
    plot_collapse({"CE": only_nc1}, tmp_path / "a.png", dpi=100)
    plot_collapse({"CE": only_nc1}, tmp_path / "b.png", metrics={"nc1": "NC1"}, dpi=100)
    four = _pixels(tmp_path / "a.png")
    assert four.shape == (680, 1000, 3)
    assert _has_curve(four[:340, :500])  # the NC1 panel is drawn ...
    assert not _has_curve(four[:340, 500:]) and not _has_curve(four[340:, :])  # ... only it
    assert _pixels(tmp_path / "b.png").shape == (340, 500, 3)  # one panel
    assert set(COLLAPSE_METRICS) == {"nc1", "gnc2_ratio", "nc3_dist", "nc4_mismatch"}


def test_plot_collapse_rejects_empty_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one method"):
        plot_collapse({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="no history entry"):
        plot_collapse({"CE": [[{"epoch": 1, "loss": 1.0}]]}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
