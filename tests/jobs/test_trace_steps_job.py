"""End-to-end test of integrations/trace_steps.py on one digits epoch (in-process)."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from types import ModuleType

import pytest
from harness.config import load_config
from harness.train import TrainerConfig


@pytest.fixture(scope="module")
def job() -> ModuleType:
    return importlib.import_module("integrations.trace_steps")


def test_trace_records_every_step_and_writes_json(job: ModuleType, tmp_path: Path) -> None:
    args = ["--preset", "quick", "--setting", "digits-adam-b128", "--recipes", "ce", "paper_mean"]
    traces = job.main([*args, "--epochs", "1", "--output-dir", str(tmp_path)])
    assert [t["recipe"] for t in traces] == ["ce", "paper_mean"]
    cfg = load_config("calibrate", "quick")
    setting = next(s for s in cfg.settings if s.name == "digits-adam-b128")
    train, *_ = job.calibrate.setting_data(setting, None)
    batches = len(train) / setting.trainer.batch_size
    steps = math.floor(batches) if TrainerConfig().drop_last else math.ceil(batches)
    for trace in traces:
        assert len(trace["steps"]) == steps  # one row per optimizer step of the epoch
        for step in trace["steps"]:
            assert step["feature_norm"] > 0 and math.isfinite(step["loss"])
            assert 0.0 <= step["batch_acc"] <= 1.0 and step["neck_grad"] > 0
        assert 0.0 <= trace["val_error"] < 0.9  # one epoch already beats chance (0.9)
        assert 0.0 <= trace["val_error_bn_recalibrated"] < 0.9
    saved = json.loads((tmp_path / "trace_steps_digits-adam-b128.json").read_text())
    assert saved == traces


def test_unknown_setting_or_recipe_is_a_clear_error(job: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown setting 'nope'"):
        job.main(["--preset", "quick", "--setting", "nope", "--output-dir", str(tmp_path)])
    with pytest.raises(ValueError, match=r"unknown recipes \['nope'\]"):
        args = ["--preset", "quick", "--setting", "digits-adam-b128", "--recipes", "nope"]
        job.main([*args, "--output-dir", str(tmp_path)])
