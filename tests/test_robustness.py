"""Tests of the PGD robust-accuracy evaluator and integrations/robustness.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from harness.config import available_presets, load_config
from harness.data import PixelDatasetInfo
from harness.train import build_pixel_classifier
from torch import nn
from torch.utils.data import Subset, TensorDataset

from hug_plugins.robustness import (
    LogitsOnly,
    attack_subset,
    evaluate_robustness,
    make_pgd,
    pgd_attack,
)
from integrations import robustness as job

ROOT = Path(__file__).resolve().parents[1]


def _trained(method: str) -> tuple[nn.Module, TensorDataset]:
    """A small classifier fitted for a few steps on separable [0, 1] data."""
    torch.manual_seed(0)
    centres = torch.rand(3, 12)
    y = torch.arange(3).repeat(40)
    x = (centres[y] + 0.08 * torch.randn(120, 12)).clamp(0, 1)
    info = PixelDatasetInfo("toy", (12,), 3, (0.5,), (0.3,))
    model = build_pixel_classifier(method, info, feature_dim=8, hidden=32)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x)[1], y).backward()  # type: ignore[no-untyped-call]
        opt.step()
    return model, TensorDataset(x, y)


@pytest.mark.parametrize("method", ["ce", "hug"])
@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_adversarial_inputs_stay_in_ball_and_box(method: str, loss: str) -> None:
    model, data = _trained(method)
    x, y = data.tensors
    for eps in (2 / 255, 8 / 255, 0.2):
        adv = pgd_attack(model, x, y, eps, steps=5, loss=loss, seed=1)  # type: ignore[arg-type]
        assert adv.shape == x.shape
        assert float((adv - x).abs().max()) <= eps + 1e-6
        assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0


@pytest.mark.parametrize("method", ["ce", "hug"])
def test_robust_never_exceeds_clean_and_eps0_is_clean(method: str) -> None:
    model, data = _trained(method)
    result = evaluate_robustness(model, data, [0.0, 2 / 255, 0.05, 0.3], steps=10, batch_size=50)
    clean = result.clean_accuracy
    assert clean > 0.9 and result.num_samples == 120
    assert result.robust_accuracy[0.0] == clean  # exactly, not approximately
    assert all(acc <= clean for acc in result.robust_accuracy.values())
    assert result.robust_accuracy[0.3] < clean  # a large ball breaks the model
    # same answer when clean accuracy is measured independently
    with torch.no_grad():
        preds = LogitsOnly(model)(data.tensors[0]).argmax(1)
    assert (preds == data.tensors[1]).float().mean().item() == pytest.approx(clean)


def test_torchattacks_pgd_at_eps0_returns_the_inputs() -> None:
    model, data = _trained("hug")
    x, y = data.tensors
    attack = make_pgd(model, 0.0, steps=3)
    assert torch.equal(attack(x, y), x)
    assert torch.equal(pgd_attack(model, x, y, 0.0), x)


def test_attack_is_seeded_and_restores_mode() -> None:
    model, data = _trained("ce")
    x, y = data.tensors
    model.train()
    a = pgd_attack(model, x, y, 8 / 255, steps=3, seed=5)
    b = pgd_attack(model, x, y, 8 / 255, steps=3, seed=5)
    assert torch.equal(a, b) and model.training
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pgd_attack(model, x + 2.0, y, 8 / 255)
    with pytest.raises(ValueError, match="loss"):
        make_pgd(model, 0.1, loss="hinge")  # type: ignore[arg-type]


def test_logits_only_returns_float32_logits() -> None:
    model, _ = _trained("hug")
    assert LogitsOnly(model)(torch.rand(5, 12).double().float()).dtype == torch.float32
    assert LogitsOnly(model)(torch.rand(5, 12)).shape == (5, 3)


def test_attack_subset_is_fixed_and_stratified_on_a_class_sorted_set() -> None:
    labels = torch.arange(4).repeat_interleave(25)  # sorted by class, like ImageFolder
    data = TensorDataset(torch.rand(100, 2), labels)
    data.targets = labels  # type: ignore[attr-defined]
    picked = attack_subset(data, 20)
    assert isinstance(picked, Subset)
    assert torch.bincount(labels[list(picked.indices)], minlength=4).tolist() == [5, 5, 5, 5]
    assert list(attack_subset(data, 20).indices) == list(picked.indices)  # type: ignore[attr-defined]
    assert attack_subset(data, None) is data and attack_subset(data, 100) is data
    plain = TensorDataset(torch.rand(10, 2), torch.zeros(10, dtype=torch.long))
    assert list(attack_subset(plain, 3).indices) == [0, 1, 2]  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="max_samples"):
        attack_subset(data, 0)


def test_presets_share_keys() -> None:
    assert {"quick", "mnist", "cifar10"} <= set(available_presets("robustness"))
    quick = load_config("robustness", "quick")
    for name in ("mnist", "cifar10", "cpu-cifar10"):
        other = load_config("robustness", name)
        assert set(other) == set(quick) and set(other.attack) == set(quick.attack)
        assert list(other.attack.eps_255) == [2, 4, 8] and other.attack.steps == 20


def test_job_trains_once_then_evaluates_from_checkpoints(tmp_path: Path) -> None:
    args = [
        "--preset",
        "quick",
        f"output_dir={tmp_path / 'out'}",
        f"checkpoint_dir={tmp_path / 'ck'}",
        "seeds=[0]",
        "trainer.epochs=2",
        "trainer.device=cpu",
        "attack.steps=3",
        "attack.max_samples=100",
        "attack.losses=[ce]",
        "progress=false",
    ]
    first = job.main(args)
    assert first["paths"]["md"].is_file() and first["paths"]["csv"].is_file()
    for run in first["runs"]:
        assert run["epochs_trained"] == 2 and run["n"] == 100
        clean = run["clean_acc"]
        for key, value in run.items():
            if key.startswith("robust@"):
                assert 0.0 <= value <= clean
    second = job.main([*args, "eval_only=true"])
    for a, b in zip(first["runs"], second["runs"], strict=True):
        assert b["epochs_trained"] == 0 and a["clean_acc"] == b["clean_acc"]
        assert a["robust@8/255"] == b["robust@8/255"]  # seeded attack, same weights
    with pytest.raises(ValueError, match="does not exist"):
        job.main([*args, f"checkpoint_dir={tmp_path / 'none'}", "eval_only=true"])
    # another job's checkpoints, found by pattern (HUG runs named by their proxy mode)
    shutil.copytree(tmp_path / "ck", tmp_path / "other")
    (hug_file,) = (tmp_path / "other").glob("digits_mlp_hug_seed0_*.pt")
    hug_file.rename(tmp_path / "other" / "digits_mlp_learnable_seed0_0f3c.pt")
    pattern = str(tmp_path / "other" / "digits_mlp_{method}_seed{seed}*.pt")
    reused = job.main([*args, "checkpoint_dir=null", f"checkpoint_pattern={pattern}"])
    for a, c in zip(first["runs"], reused["runs"], strict=True):
        assert c["epochs_trained"] == 0 and a["robust@8/255"] == c["robust@8/255"]
    assert "trained by another job" in reused["paths"]["md"].read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="no file match"):
        job.main([*args, f"checkpoint_pattern={tmp_path / 'none_{method}_{seed}.pt'}"])


def test_batch_norm_model_stays_in_eval_mode_through_the_attacks() -> None:
    torch.manual_seed(0)
    info = PixelDatasetInfo("img", (3, 8, 8), 3, (0.5,) * 3, (0.25,) * 3)
    model = build_pixel_classifier("ce", info, arch="cnn", hidden=4, feature_dim=6)
    x = torch.rand(64, 3, 8, 8)
    y = torch.randint(0, 3, (64,))
    model.train()
    for _ in range(3):  # give batch norm running statistics that differ from batch statistics
        model(x * 0.5)
    running = [b.clone() for b in model.buffers()]
    data = TensorDataset(x, y)
    first = evaluate_robustness(model, data, [0.0, 8 / 255], steps=2, batch_size=16)
    second = evaluate_robustness(model, data, [0.0, 8 / 255], steps=2, batch_size=16, loss="margin")
    assert first.clean_accuracy == second.clean_accuracy  # every batch classified in eval mode
    assert all(torch.equal(a, b) for a, b in zip(running, model.buffers(), strict=True))
    assert model.training  # the caller's mode is restored
    model.train()
    pgd_attack(model, x[:4], y[:4], 8 / 255, steps=2)
    assert model.training
