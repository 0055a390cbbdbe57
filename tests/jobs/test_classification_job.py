"""End-to-end tests of integrations/classification.py on the quick preset with a tiny budget."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from harness.config import available_presets, load_config, parse_cli, to_dict
from harness.train.comparison import (
    PROXY_METHODS,
    comparison_data,
    comparison_model,
)

from hug_plugins.losses import HUGLoss
from integrations import classification as job

TINY = [
    "seeds=[0,1]",
    "trainer.epochs=2",
    "trainer.batch_size=128",
    "data.train_subset=400",
    "tables.architectures.archs=[cnn]",
    "model.width=8",
    "model.feature_dim=16",
    "progress=false",
]


def _run(tmp_path: Path, *extra: str) -> dict[str, Any]:
    return job.main(["--preset", "quick", *TINY, f"output_dir={tmp_path}", *extra])


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("classification")
    return {"out": out, **_run(out, f"checkpoint_dir={out / 'ckpt'}")}


def test_presets_exist_and_share_keys() -> None:
    assert {"quick", "cpu-cifar10", "paper"} <= set(available_presets("classification"))
    quick = load_config("classification", "quick")
    for name in ("cpu-cifar10", "paper"):
        other = load_config("classification", name)
        assert set(other) == set(quick) and set(other.trainer) == set(quick.trainer)
        assert len(other.seeds) >= 3 and other.trainer.optimizer == "sgd"
        assert other.augment.crop_padding == 4 and other.augment.flip is True
    paper = load_config("classification", "paper")
    assert list(paper.data.names) == ["cifar10", "cifar100"]
    assert list(paper.tables.architectures.archs) == ["resnet18", "vgg16", "densenet121"]
    assert list(paper.tables.proxies.methods) == list(PROXY_METHODS)
    for name in ("quick", "cpu-cifar10", "cpu-cifar100", "paper"):
        recipes = load_config("classification", name).tables.recipes
        assert list(recipes.methods) == ["ce", "learnable", "paper", "pure"]


def test_both_tables_are_written_with_mean_std_and_provenance(result: dict[str, Any]) -> None:
    out: Path = result["out"]
    proxies = result["tables"]["proxies"]
    assert [r["method"] for r in proxies] == list(PROXY_METHODS.values())
    assert [r["method"] for r in result["tables"]["architectures"]] == ["CE", "HUG (learnable)"]
    recipes = result["tables"]["recipes"]
    assert [r["method"] for r in recipes] == [
        "CE",
        "HUG (learnable)",
        "HUG (paper form, learnable)",
        "HUG (pure: no CE term, learnable)",
    ]
    # shared runs are reused: the same (dataset, arch, method, seed) gives the same row
    assert recipes[1]["test_error_%"] == proxies[1]["test_error_%"]
    assert all(r["vs_CE_pp"] is not None for r in recipes[1:])
    for row in proxies:
        mean, std = row["test_error_%"]
        assert 0.0 <= mean <= 100.0 and std >= 0.0 and row["seeds"] == 2
        assert (row["vs_CE_pp"] is None) == (row["method"] == "CE")
        assert all(math.isfinite(row[c][0]) for c in ("nc1", "gnc2", "nc3", "nc4"))
        assert 0.0 <= row["nc4_unit"][0] <= 1.0 and math.isfinite(row["nc1_unit"][0])
    md = (out / "classification_quick.md").read_text(encoding="utf-8")
    assert "Command: `python integrations/classification.py --preset quick" in md
    assert "Hardware: CPU" in md and "Wall time" in md and " ± " in md
    assert "![classification_quick_nc_digits_cnn](classification_quick_nc_digits_cnn.png)" in md
    with open(out / "classification_quick_proxies.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5 and {"test_error_%_mean", "test_error_%_std", "nc1_mean"} <= set(rows[0])
    assert (out / "classification_quick_runs.csv").is_file()
    assert (out / "classification_quick_nc_digits_cnn.png").read_bytes()[:4] == b"\x89PNG"


def test_collapse_metrics_are_logged_every_epoch(result: dict[str, Any]) -> None:
    with open(result["out"] / "classification_quick_epochs.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 7 * 2 * 2  # 7 methods (cnn runs shared by the tables) x 2 seeds x 2 epochs
    for row in rows:
        for key in ("test_error", "nc1", "gnc2_ratio", "nc3_dist", "nc4_mismatch", "unit_nc1"):
            assert math.isfinite(float(row[key])), key
    assert {row["epoch"] for row in rows} == {"1", "2"}


def test_rerun_resumes_from_checkpoints(result: dict[str, Any], tmp_path: Path) -> None:
    out: Path = result["out"]
    assert len(list((out / "ckpt").glob("digits_cnn_*_seed*_*.pt"))) == 14
    again = _run(tmp_path, f"checkpoint_dir={out / 'ckpt'}")
    for key, run in again["runs"].items():
        assert run["resumed_from_epoch"] == 2.0  # nothing retrained
        assert run["test_error"] == result["runs"][key]["test_error"]
        assert run["nc1"] == result["runs"][key]["nc1"]


def test_ce_and_hug_share_initial_backbone_weights() -> None:
    cfg = load_config("classification", "quick", ["model.width=8"])
    _, _, _, info = comparison_data("digits", cfg)
    ce, _ = comparison_model("ce", "cnn", info, 5, cfg)
    hug, objective = comparison_model("static_optimized", "cnn", info, 5, cfg)
    assert type(objective).__name__ == "HUGObjective"
    ce_state, hug_state = ce.state_dict(), hug.state_dict()
    shared = [k for k in ce_state if not k.startswith("head.")]
    assert shared and all(torch.equal(ce_state[k], hug_state[k]) for k in shared)


def test_data_root_option_maps_to_the_config() -> None:
    cfg = parse_cli(["--preset", "quick", "--data-root", "/data", "seeds=[0]"], "classification")
    assert cfg.data.root == "/data" and list(cfg.seeds) == [0]


def test_bad_tables_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown archs"):
        _run(tmp_path, "tables.proxies.archs=[alexnet]")
    with pytest.raises(ValueError, match="nothing to run"):
        _run(
            tmp_path,
            "tables.proxies.archs=[]",
            "tables.architectures.archs=[]",
            "tables.recipes.archs=[]",
        )
    with pytest.raises(ValueError, match="seeds"):
        _run(tmp_path, "seeds=[1,1]")


def test_plus_overrides_reach_the_hug_loss() -> None:
    cfg = load_config(
        "classification",
        "quick",
        ["model.width=8", "+hug.loss.intra=squared_distance", "+hug.loss.detach_proxies=false"],
    )
    _, _, _, info = comparison_data("digits", cfg)
    _, objective = comparison_model("learnable", "cnn", info, 0, cfg)
    config = objective.loss.config
    assert config.intra == "squared_distance" and config.detach_proxies is False
    bad = load_config("classification", "quick", ["+hug.loss.intra_kind=distance"])
    with pytest.raises(ValueError, match="unknown HUG argument"):
        comparison_model("learnable", "cnn", info, 0, bad)


def test_recipe_methods_build_the_paper_form_the_hybrid_and_pure_hug() -> None:
    cfg = load_config("classification", "quick", ["model.width=8", "hug.loss.alpha=3.0"])
    _, _, _, info = comparison_data("digits", cfg)
    _, default = comparison_model("learnable", "cnn", info, 0, cfg)
    paper_model, paper = comparison_model("paper", "cnn", info, 0, cfg)
    hybrid_model, hybrid = comparison_model("hybrid", "cnn", info, 0, cfg)
    pure_model, pure = comparison_model("pure", "cnn", info, 0, cfg)
    # the job's recipe is HUGLoss()'s (HUG + 1.0 x CE) with the job's overrides
    assert default.loss.config == HUGLoss(alpha=3.0).config
    assert default.loss.config.ce_weight == 1.0
    # the paper form ignores the job's recipe: the poster's sum form with its own weights
    assert paper.loss.config == HUGLoss.preset("mhe_sum").config
    # the hybrid is the job's recipe (overrides included) with the CE term: here the same
    assert hybrid.loss.config == dataclasses.replace(default.loss.config, ce_weight=1.0)
    # pure HUG is the job's recipe (overrides included) without it
    assert pure.loss.config == dataclasses.replace(default.loss.config, ce_weight=0.0)
    for model in (paper_model, hybrid_model, pure_model):
        assert model.head.mode == "learnable" and model.head.proxies.requires_grad


def test_checkpoint_name_follows_the_resolved_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.train import comparison

    cfg = to_dict(load_config("classification", "quick", ["checkpoint_dir=ck"]))

    def names() -> dict[str, str | None]:
        checkpoint = comparison.comparison_checkpoint
        return {m: checkpoint(cfg, "digits", "cnn", m, 0) for m in job.METHODS}

    before = names()
    # a new default recipe (same preset name, other weights) must not reload the old runs
    original = comparison.preset_config

    def shifted(name: str, **overrides: Any) -> Any:
        return dataclasses.replace(original(name, **overrides), alpha=123.0)

    monkeypatch.setattr(comparison, "preset_config", shifted)
    after = names()
    assert after["ce"] == before["ce"]  # CE trains no HUG recipe
    assert all(after[m] != before[m] for m in job.METHODS if m != "ce")
