"""End-to-end test of integrations/digits.py on a tiny budget (run in-process)."""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path
from types import ModuleType

import pytest
from harness.config import available_presets, load_config

METHODS = [
    "CE",
    "HUG (default)",
    "HUG (pure: no CE term)",
    "MHE-HUG (paper)",
    "MHS-HUG (paper)",
    "MGD-HUG (paper)",
]


@pytest.fixture(scope="module")
def job() -> ModuleType:
    return importlib.import_module("integrations.digits")


def test_presets_exist_and_share_keys() -> None:
    assert {"default", "quick"} <= set(available_presets("digits"))
    default = load_config("digits", "default")
    quick = load_config("digits", "quick")
    assert set(default) == set(quick) and set(default.trainer) == set(quick.trainer)
    assert len(default.seeds) >= 3 and list(default.methods) == [
        "ce",
        "default",
        "pure",
        "distance_pull",
        "mhe_sum",
        "mhs_sum",
        "mgd_sum",
    ]


def test_quick_job_writes_tables(job: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = job.main(
        [
            "--preset",
            "quick",
            f"output_dir={out}",
            "seeds=[0,1]",
            "trainer.epochs=2",
            "trainer.device=cpu",
            "progress=false",
        ]
    )
    md = out / "digits.md"
    csv_path = out / "digits.csv"
    assert result["paths"]["md"] == md and md.is_file() and csv_path.is_file()
    assert (out / "digits_runs.md").is_file() and (out / "digits_runs.csv").is_file()

    text = md.read_text(encoding="utf-8")
    assert "Command: `python integrations/digits.py --preset quick" in text
    assert "Hardware: CPU:" in text
    header = (
        "| method | seeds | test_error | vs_CE | nc1 | gnc2 | nc3 | nc4 | nc1_unit | nc4_unit |"
    )
    assert header in text
    for method in METHODS:
        assert f"| {method} | " in text
    assert " ± " in text

    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["method"] for r in rows] == METHODS
    for row in rows:
        error = float(row["test_error_mean"])
        assert 0.0 <= error <= 1.0
        assert float(row["test_error_std"]) >= 0.0
        assert 0.0 <= float(row["nc4_mean"]) <= 1.0
        assert 0.0 <= float(row["nc4_unit_mean"]) <= 1.0
        assert math.isfinite(float(row["nc1_unit_mean"]))
        for key in ("nc1_mean", "gnc2_mean", "nc3_mean"):
            assert math.isfinite(float(row[key])) and float(row[key]) >= 0.0
        assert float(row["gnc2_mean"]) >= 0.99  # the optimum of the energy ratio is 1

    with (out / "digits_runs.csv").open() as handle:
        runs = list(csv.DictReader(handle))
    assert len(runs) == len(METHODS) * 2
    assert {(r["method"], r["seed"]) for r in runs} == {(m, s) for m in METHODS for s in "01"}


def test_job_resumes_from_checkpoints(job: ModuleType, tmp_path: Path) -> None:
    args = [
        "--preset",
        "quick",
        f"output_dir={tmp_path / 'out'}",
        f"checkpoint_dir={tmp_path / 'ck'}",
        "methods=[ce]",
        "seeds=[0]",
        "trainer.epochs=1",
        "trainer.device=cpu",
        "progress=false",
    ]
    first = job.main(args)
    prefix = "digits_mlp_ce_seed0_"
    assert [p.name[: len(prefix)] for p in (tmp_path / "ck").iterdir()] == [prefix]
    assert first["runs"][0]["epochs_trained"] == 1
    again = job.main(args)  # finished run: restored, not retrained
    assert again["runs"][0]["epochs_trained"] == 0
    assert again["runs"][0]["test_error"] == first["runs"][0]["test_error"]
    longer = job.main([*args, "trainer.epochs=2"])  # a longer budget trains only the new epoch
    assert longer["runs"][0]["epochs_trained"] == 1
    other_lr = job.main([*args, "trainer.lr=0.002"])  # another recipe: a new run, not reloaded
    assert other_lr["runs"][0]["epochs_trained"] == 1
    assert len(list((tmp_path / "ck").iterdir())) == 2


def test_run_tag_follows_the_resolved_recipe(job: ModuleType) -> None:
    from harness.config import to_dict
    from harness.train import TrainerConfig

    cfg = load_config("digits", "quick")
    trainer = TrainerConfig.from_mapping(to_dict(cfg.trainer))
    tags = {m: job.run_tag(m, cfg, trainer) for m in ("ce", "default", "pure")}
    assert len(set(tags.values())) == 3  # the presets resolve to different recipes
    assert job.run_tag("default", cfg, trainer) == tags["default"]  # stable
    longer = TrainerConfig.from_mapping({**to_dict(cfg.trainer), "epochs": 7})
    assert job.run_tag("default", cfg, longer) == tags["default"]  # a longer budget resumes
    other_lr = TrainerConfig.from_mapping({**to_dict(cfg.trainer), "lr": 0.5})
    assert job.run_tag("default", cfg, other_lr) != tags["default"]


def test_job_rejects_bad_config(job: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown config key"):
        job.main(["--preset", "quick", "trainer.epoch=3"])
    with pytest.raises(ValueError, match="methods"):
        job.main(["--preset", "quick", "methods=[ce,xent]", f"output_dir={tmp_path}"])
    with pytest.raises(ValueError, match="available presets"):
        job.main(["--preset", "nope"])
