"""Tests of harness.simclr: DDP batch arithmetic, digits views, criteria and evaluation."""

from __future__ import annotations

import pytest
import torch
from harness.simclr import (
    CRITERIA,
    DigitsViews,
    TwoViewLoss,
    build_criterion,
    build_ssl_model,
    evaluate_ssl,
    images_per_run,
    load_ssl_datasets,
    per_process_batch,
)


def test_global_batch_is_split_across_processes() -> None:
    assert per_process_batch(128, 1) == 128
    assert per_process_batch(128, 2) == 64
    with pytest.raises(ValueError, match="global batch"):
        per_process_batch(128, 3)
    # same global images per epoch with 1 or 2 processes (drop_last)
    assert images_per_run(1348, 128, 1, 2, True) == 2 * 1280
    assert images_per_run(1348, 64, 2, 2, True) == 2 * 1280
    assert images_per_run(1348, 64, 2, 1, False) == 1348


def test_digits_views_rank_streams() -> None:
    augment = DigitsViews([0.5, 1.0], 10.0, 0.1)
    items = [(torch.rand(1, 8, 8), i % 10) for i in range(6)]
    # default: torch's global generator (the single-process behaviour is unchanged)
    torch.manual_seed(3)
    first = augment(items)[0][0]
    torch.manual_seed(3)
    torch.testing.assert_close(augment(items)[0][0], first)
    # per-rank copies: reproducible per (seed, rank), different across ranks
    rank0 = augment.for_rank(0, 0)(items)[0][0]
    torch.testing.assert_close(augment.for_rank(0, 0)(items)[0][0], rank0)
    assert not torch.allclose(augment.for_rank(0, 1)(items)[0][0], rank0)


@pytest.mark.parametrize("name", CRITERIA)
def test_every_criterion_trains_the_model_from_two_views(name: str) -> None:
    torch.manual_seed(0)
    data = load_ssl_datasets("digits")
    model = build_ssl_model("digits_cnn", width=4, proj_hidden=16, proj_dim=8)
    views, labels = data.collate_fn([data.train[i] for i in range(16)])  # type: ignore[misc]
    loss = TwoViewLoss(build_criterion(name, {}))(model, (views, labels))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.projection_head.parameters())


def test_evaluate_ssl_reports_bounded_metrics_and_errors() -> None:
    torch.manual_seed(0)
    data = load_ssl_datasets("digits")
    model = build_ssl_model("digits_cnn", width=4, proj_hidden=16, proj_dim=8)
    metrics = evaluate_ssl(model, data.train_eval, data.test_eval, data.num_classes, knn_k=10)
    assert 0.0 <= metrics["knn_top1"] <= 1.0 and 0.0 <= metrics["nc4_agreement"] <= 1.0
    assert metrics["gnc2_ratio"] >= 1.0 - 1e-6
    with pytest.raises(ValueError, match="unknown criterion"):
        build_criterion("byol", {})
    with pytest.raises(ValueError, match=r"model\.backbone"):
        build_ssl_model("vit", width=4, proj_hidden=8, proj_dim=4)
    with pytest.raises(ValueError, match=r"data\.name"):
        load_ssl_datasets("svhn")
    with pytest.raises(ValueError, match="data-root"):
        load_ssl_datasets("cifar10")


def test_rgb_cnn_backbone_projects_cifar_sized_images() -> None:
    model = build_ssl_model("cnn", width=4, proj_hidden=16, proj_dim=8)
    assert model(torch.rand(3, 3, 32, 32)).shape == (3, 8)
