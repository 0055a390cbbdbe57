"""Tests of the loss-step benchmark harness and its script (no timing thresholds)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from harness.benchmark import (
    METHODS,
    TRAIN_MODELS,
    measure_loss_step,
    measure_side_by_side,
    measure_ssl_side_by_side,
    measure_train_side_by_side,
)
from torch import nn

from hug_plugins._checks import validation_enabled
from hug_plugins.functional.fused import compile_mode, fused_enabled
from hug_plugins.losses import HUGLoss
from hug_plugins.reference import authors_hug_loss, cross_entropy_head_loss


def _expected_loss(method: str, num_classes: int, batch_size: int, dim: int, seed: int) -> float:
    """The loss the harness should time, rebuilt from the same seeded inputs."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch_size, dim, generator=gen)
    labels = torch.randint(0, num_classes, (batch_size,), generator=gen)
    if method in ("ce", "ce_compiled"):
        torch.manual_seed(1234)  # the Linear head is drawn from the global RNG
        return float(cross_entropy_head_loss(features, labels, nn.Linear(dim, num_classes)))
    proxies = torch.randn(num_classes, dim, generator=gen)
    if method == "naive":
        return float(authors_hug_loss(features, labels, proxies))
    # Static proxies (no gradient): the inter term is the exact (full-mode) energy, whatever
    # the mode; learnable ones in rows mode (C > B here) get the batch's rows estimate.
    proxies.requires_grad_(method != "hug_static")
    mode = "full" if method == "hug_full" else "auto"
    ce_weight = 1.0 if method.startswith("hybrid") else 0.0
    return float(HUGLoss(energy_mode=mode, ce_weight=ce_weight)(features, labels, proxies))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_times_the_intended_loss(method: str) -> None:
    torch.manual_seed(1234)
    result = measure_loss_step(
        method, num_classes=12, batch_size=8, dim=4, repeats=3, warmup=2, seed=7
    )
    assert result["steps"] == 5  # warmup + repeats, each a forward and backward
    assert result["loss"] == pytest.approx(_expected_loss(method, 12, 8, 4, seed=7), rel=1e-6)
    assert 0 < result["ms_min"] <= result["ms"]
    assert result["peak_mib"] >= 0
    assert validation_enabled()  # hug_unchecked restores the global switch


def test_unknown_method_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown method"):
        measure_loss_step("focal", num_classes=4, batch_size=4, dim=2, repeats=1, warmup=0)


def test_naive_reference_matches_library_on_its_valid_domain() -> None:
    features = torch.randn(16, 5, dtype=torch.float64)
    labels = torch.randint(0, 6, (16,))
    proxies = torch.randn(6, 5, dtype=torch.float64)
    torch.testing.assert_close(
        authors_hug_loss(features, labels, proxies),
        HUGLoss.preset("authors")(features, labels, proxies),
    )


def test_reference_shows_the_documented_flaws() -> None:
    proxies = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    features = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 2])
    assert torch.isnan(authors_hug_loss(features, labels, proxies))  # zero feature
    collapsed = authors_hug_loss(features[:1], labels[:1], proxies)
    assert torch.isfinite(collapsed)  # the coincident proxy pair is silently dropped
    assert torch.isfinite(HUGLoss.preset("authors")(features, labels, proxies))


def test_bench_script_writes_tables(tmp_path: Path) -> None:
    module = importlib.import_module("integrations.bench_loss")
    tables = module.main(
        [
            "--preset",
            "quick",
            f"output_dir={tmp_path}",
            "classes=[16,64]",
            "batch_size=8",
            "dim=4",
            "repeats=1",
            "warmup=0",
            "naive_max_classes=16",
        ]
    )
    rows = tables["loss"]
    assert [row["C"] for row in rows] == [16, 64]
    assert "naive/hug" in rows[0] and "naive/hug" not in rows[1]  # naive capped at C = 16
    for row in rows:
        for ratio in ("hug/ce", "unchecked/ce", "eager/ce", "reference/ce", "static/ce"):
            assert row[ratio] > 0
        assert row["compiled hug/compiled ce"] > 0 and row["compile_s"] > 0
        assert row["hug_peak_mib"] >= 0  # memory: true in the quick preset
    assert [row["batch"] for row in tables["ssl"]] == [32]
    assert tables["ssl"][0]["hug/ntxent"] > 0
    assert [row["model"] for row in tables["train"]] == [TRAIN_MODELS["mlp"]]
    assert tables["train"][0]["hug_compiled_ms"] > 0
    for name in ("bench_loss", "bench_ssl", "bench_train"):
        text = (tmp_path / f"{name}.md").read_text()
        assert "Command:" in text and "Median of" in text
        assert (tmp_path / f"{name}.csv").read_text().count("\n") >= 2


def test_side_by_side_times_every_method_on_the_same_inputs() -> None:
    results = measure_side_by_side(
        ["ce", "hug", "hug_reference", "hug_eager"], num_classes=12, batch_size=8, dim=4,
        repeats=2, warmup=1, seed=7,
    )  # fmt: skip
    assert all(r["steps"] == 3 and r["ms"] > 0 for r in results.values())
    # The fused, eager and reference paths compute the same loss on the same inputs.
    expected = _expected_loss("hug", 12, 8, 4, seed=7)
    for method in ("hug", "hug_reference", "hug_eager"):
        assert results[method]["loss"] == pytest.approx(expected, rel=1e-5)
    assert compile_mode() == "auto" and fused_enabled()  # switches restored


def test_ssl_and_train_measurements_run_the_named_losses() -> None:
    ssl = measure_ssl_side_by_side(16, dim=8, repeats=1, warmup=1)
    assert set(ssl) == {"ntxent", "hug_criterion"}
    assert ssl["ntxent"]["loss"] != ssl["hug_criterion"]["loss"]
    train = measure_train_side_by_side("mlp", batch_size=8, repeats=2, warmup=1)
    assert set(train) == {"ce", "hug", "ce_compiled", "hug_compiled"}
    for method in ("ce", "hug"):  # the compiled step trains the same model the same way
        compiled = train[f"{method}_compiled"]["loss"]
        assert compiled == pytest.approx(train[method]["loss"], rel=1e-4)
    # CE of 10 classes starts near log(10); HUG's default loss is on another scale.
    assert abs(train["ce"]["loss"] - 2.3) < 0.5
    with pytest.raises(ValueError, match="unknown model"):
        measure_train_side_by_side("vit", batch_size=2, repeats=1, warmup=0)
