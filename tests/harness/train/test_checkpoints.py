"""Tests of harness.train.checkpoints: pixel classifiers, checkpoint reuse."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from harness.data import PixelDatasetInfo, load_pixel_datasets
from harness.io import atomic_torch_save
from harness.train import (
    build_pixel_classifier,
    checkpoint_file,
    fit_pixel_classifier,
    load_checkpoint_weights,
    train_or_load,
)

TOY = PixelDatasetInfo("toy", (12,), 3, (0.5,), (0.3,))
IMAGES = PixelDatasetInfo("img", (3, 8, 8), 4, (0.5,) * 3, (0.25,) * 3)


def test_build_pixel_classifier_shapes_and_errors() -> None:
    torch.manual_seed(0)
    net = build_pixel_classifier("ce", IMAGES, arch="cnn", feature_dim=6, hidden=2)
    features, logits = net(torch.rand(5, 3, 8, 8))
    assert features.shape == (5, 6) and logits.shape == (5, 4)
    assert type(build_pixel_classifier("hug", TOY).head).__name__ == "ProxyHead"
    with pytest.raises(ValueError, match="method"):
        build_pixel_classifier("mse", TOY)
    with pytest.raises(ValueError, match="needs \\(C, H, W\\)"):
        build_pixel_classifier("ce", TOY, arch="cnn")
    with pytest.raises(ValueError, match="architecture"):
        build_pixel_classifier("ce", TOY, arch="vit")


def test_load_checkpoint_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_pixel_classifier("hug", TOY, feature_dim=8, hidden=32)
    path = tmp_path / "m.pt"
    atomic_torch_save({"model": model.state_dict(), "epoch": 3, "history": []}, path)
    torch.manual_seed(1)
    fresh = build_pixel_classifier("hug", TOY, feature_dim=8, hidden=32)
    meta = load_checkpoint_weights(fresh, path)
    assert meta["epoch"] == 3
    x = torch.rand(4, 12)
    assert torch.equal(fresh(x)[1], model(x)[1])
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint_weights(fresh, tmp_path / "missing.pt")
    wrong = build_pixel_classifier("ce", TOY, feature_dim=8, hidden=16)
    with pytest.raises(ValueError, match="does not fit"):
        load_checkpoint_weights(wrong, path)


def test_fit_trains_once_then_reloads_the_same_weights(tmp_path: Path) -> None:
    train, _, info = load_pixel_datasets("digits")
    options = {"arch": "mlp", "hidden": 16, "feature_dim": 8}
    kwargs = {
        "model_options": options,
        "hug_preset": "default",
        "hug_overrides": None,
        "trainer_cfg": {"epochs": 1, "batch_size": 128, "lr": 0.01, "optimizer": "adam"},
        "seed": 0,
        "checkpoint": checkpoint_file(tmp_path, "digits", "mlp", "hug", 0),
    }
    model, first = fit_pixel_classifier("hug", info, train, **kwargs)
    again, second = fit_pixel_classifier("hug", info, train, **kwargs)
    assert first["epochs_trained"] == 1.0 and second["epochs_trained"] == 0.0
    x = train.tensors[0][:8]
    assert torch.equal(model(x)[1], again(x)[1])
    evaluated, third = fit_pixel_classifier("hug", info, train, eval_only=True, **kwargs)
    assert third["epochs_trained"] == 0.0 and torch.equal(evaluated(x)[1], model(x)[1])
    with pytest.raises(ValueError, match="unfinished: epoch 1 of 3"):
        fit_pixel_classifier(
            "hug", info, train, eval_only=True, **{**kwargs, "trainer_cfg": {"epochs": 3}}
        )
    with pytest.raises(ValueError, match="method"):
        train_or_load(model, "mse", train, {}, seed=0, checkpoint=None)
    with pytest.raises(ValueError, match="eval_only needs"):
        train_or_load(model, "ce", train, {}, seed=0, checkpoint=None, eval_only=True)


def test_pixel_datasets_digits_are_the_flat_tabular_split() -> None:
    from harness.data import load_digits_split

    train, _, info = load_pixel_datasets("digits", split_seed=2)
    reference, _ = load_digits_split(2)
    assert torch.equal(train.tensors[0], reference.tensors[0])
    assert info.input_shape == (64,) and info.num_classes == 10 and len(info.mean) == 1
    with pytest.raises(ValueError, match="unknown dataset"):
        load_pixel_datasets("svhn")
    with pytest.raises(ValueError, match="data root"):
        load_pixel_datasets("cifar10")


def test_progress_prints_a_line_per_epoch_with_the_time_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train, _, info = load_pixel_datasets("digits")
    fit_pixel_classifier(
        "ce",
        info,
        train,
        model_options={"arch": "mlp", "hidden": 8, "feature_dim": 4},
        hug_preset="default",
        hug_overrides=None,
        trainer_cfg={"epochs": 2, "batch_size": 256, "optimizer": "adam", "progress": False},
        seed=0,
        checkpoint=None,
        progress=True,
    )
    lines = [line for line in capsys.readouterr().err.splitlines() if "left in this run" in line]
    assert [line.split(",")[0].strip() for line in lines] == [
        "ce seed 0: epoch 1/2",
        "ce seed 0: epoch 2/2",
    ]
    assert all("loss" in line for line in lines)
