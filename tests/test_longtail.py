"""Tests of the long-tail builder, shot-group accuracy and integrations/longtail.py."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from harness.config import available_presets, load_config
from torch import nn
from torch.utils.data import Subset, TensorDataset

from hug_plugins.longtail import (
    dataset_targets,
    group_accuracies,
    longtail_counts,
    longtail_indices,
    make_longtail,
    per_class_accuracy,
    shot_groups,
    shot_thresholds,
)
from integrations import longtail as job

ROOT = Path(__file__).resolve().parents[1]


def _ldam_reference(targets: np.ndarray, ratio: float, num_classes: int) -> list[int]:
    """The selection of LDAM-DRW's IMBALANCECIFAR10 (gen_imbalanced_data), verbatim logic."""
    img_max = len(targets) / num_classes
    img_num = [int(img_max * ratio ** (c / (num_classes - 1.0))) for c in range(num_classes)]
    np.random.seed(0)
    selected: list[int] = []
    for the_class, the_img_num in zip(np.unique(targets), img_num, strict=True):
        idx = np.where(targets == the_class)[0]
        np.random.shuffle(idx)
        selected.extend(idx[:the_img_num].tolist())
    return selected


def test_counts_match_ldam_cifar10() -> None:
    assert longtail_counts(5000, 10, 0.01) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert longtail_counts(500, 100, 0.01)[-1] == 5 and longtail_counts(500, 100, 0.01)[0] == 500
    assert longtail_counts(7, 3, 1.0) == [7, 7, 7]
    for ratio in (0.2, 0.1, 0.02, 0.01):
        counts = longtail_counts(5000, 10, ratio)
        assert counts == sorted(counts, reverse=True) and counts[-1] == int(5000 * ratio)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, True])
def test_invalid_ratio_raises(bad: float) -> None:
    with pytest.raises(ValueError, match="ratio"):
        longtail_counts(10, 3, bad)


@pytest.mark.parametrize("ratio", [0.2, 0.01])
def test_indices_match_ldam_reference(ratio: float) -> None:
    rng = np.random.RandomState(3)
    targets = rng.permutation(np.repeat(np.arange(10), 300))
    state = np.random.get_state()
    expected = _ldam_reference(targets, ratio, 10)
    np.random.set_state(state)
    indices, counts = longtail_indices(torch.from_numpy(targets), ratio)
    assert indices.tolist() == expected
    assert counts == longtail_counts(300, 10, ratio)
    assert len(set(indices.tolist())) == len(indices)
    kept = torch.from_numpy(targets)[indices]
    assert torch.bincount(kept, minlength=10).tolist() == counts


def test_make_longtail_on_tensor_dataset_and_subset() -> None:
    y = torch.arange(5).repeat(40)
    data = TensorDataset(torch.randn(200, 3), y)
    lt = make_longtail(data, 0.1)
    assert lt.class_counts == longtail_counts(40, 5, 0.1)
    assert torch.equal(dataset_targets(lt), lt.targets)
    for i in range(len(lt)):
        assert int(lt[i][1]) == int(lt.targets[i])
    nested = make_longtail(Subset(data, list(range(100))), 0.5)
    assert nested.class_counts == longtail_counts(20, 5, 0.5)
    # deterministic: the same call gives the same subset
    assert make_longtail(data, 0.1).indices == lt.indices


def test_make_longtail_on_torchvision_style_and_imagefolder(tmp_path: Path) -> None:
    from PIL import Image
    from torchvision.datasets import ImageFolder

    class Fake:
        def __init__(self) -> None:
            self.targets = [0, 1, 2] * 10  # a list, like torchvision's MNIST/CIFAR

        def __len__(self) -> int:
            return 30

        def __getitem__(self, i: int) -> tuple[int, int]:
            return i, self.targets[i]

    assert make_longtail(Fake(), 0.1).class_counts == [10, 3, 1]  # type: ignore[arg-type]
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for k in range(4):
            Image.new("RGB", (2, 2)).save(tmp_path / cls / f"{k}.png")
    folder = ImageFolder(str(tmp_path))
    lt = make_longtail(folder, 0.5)
    assert lt.class_counts == [4, 2]
    assert [folder.targets[i] for i in lt.indices] == lt.targets.tolist()


def test_shot_groups_and_thresholds() -> None:
    assert shot_thresholds(5000) == (100.0, 20.0)
    assert shot_thresholds(500) == (100.0, 20.0)
    many, few = shot_thresholds(250)
    assert (many, few) == (50.0, 10.0)
    groups = shot_groups([101, 100, 20, 19, 0], 100, 20)
    assert groups == {"many": [0], "medium": [1, 2], "few": [3, 4]}
    with pytest.raises(ValueError):
        shot_thresholds(100, many=10, few=20)


def test_per_class_and_group_accuracy() -> None:
    # identity "model": predicts the arg-max coordinate
    x = torch.eye(3)[[0, 0, 1, 1, 2, 2]]
    y = torch.tensor([0, 1, 1, 1, 2, 0])
    acc, support = per_class_accuracy(nn.Identity(), TensorDataset(x, y), 3, batch_size=4)
    assert support.tolist() == [2, 3, 1]
    assert acc.tolist() == [0.5, 2 / 3, 1.0]
    out = group_accuracies(acc, support, {"many": [0, 1], "medium": [], "few": [2]})
    assert out["top1"] == pytest.approx(4 / 6)
    assert out["many"] == pytest.approx(3 / 5) and out["few"] == 1.0
    assert np.isnan(out["medium"])


def test_presets_share_keys() -> None:
    real = ("mnist", "cifar10", "cpu-cifar10", "cpu-cifar100")
    assert {"quick", *real} <= set(available_presets("longtail"))
    quick = load_config("longtail", "quick")
    assert load_config("longtail", "cpu-cifar100").data.name == "cifar100"
    for name in real:
        other = load_config("longtail", name)
        assert set(other) == set(quick) and set(other.trainer) == set(quick.trainer)
        assert list(other.ratios) == [0.2, 0.1, 0.02, 0.01] and list(other.methods) == ["ce", "hug"]


def test_job_writes_tables_and_reuses_checkpoints(tmp_path: Path) -> None:
    args = [
        "--preset",
        "quick",
        f"output_dir={tmp_path / 'out'}",
        f"checkpoint_dir={tmp_path / 'ck'}",
        "ratios=[0.1]",
        "seeds=[0,1]",
        "trainer.epochs=2",
        "trainer.device=cpu",
        "progress=false",
    ]
    first = job.main(args)
    md = first["paths"]["md"]
    assert md.is_file() and first["paths"]["csv"].is_file()
    assert {r["method"] for r in first["rows"]} == {"CE", "HUG"}
    for run in first["runs"]:
        assert run["epochs_trained"] == 2
        assert 0 <= run["top1_acc"] <= 100
    with first["paths"]["csv"].open() as handle:
        header = next(csv.reader(handle))
    assert {"top1_acc_mean", "many_acc_std", "medium_acc_mean"} <= set(header)
    # a second run reloads the finished checkpoints: nothing is retrained, same results
    second = job.main([*args, "eval_only=true"])
    for a, b in zip(first["runs"], second["runs"], strict=True):
        assert b["epochs_trained"] == 0 and a["top1_acc"] == b["top1_acc"]
    # a changed recipe is never served another recipe's checkpoint (its name carries a settings
    # tag): with eval_only it finds none, without it trains anew
    for changed in ("trainer.lr=0.01", "hug.loss.alpha=1.0", "longtail_seed=1"):
        with pytest.raises(ValueError, match="does not exist"):
            job.main([*args, changed, "eval_only=true"])
    moved = job.main([*args, "trainer.device=auto", f"data.root={tmp_path}", "eval_only=true"])
    assert all(run["epochs_trained"] == 0 for run in moved["runs"])
