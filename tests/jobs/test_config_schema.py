"""Every job preset uses the one config schema: output_dir / output_name, num_threads, seeds,
and a trainer section for the jobs that train."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness.config import available_presets, load_config

TASKS = sorted(p.name for p in (Path(__file__).resolve().parents[2] / "configs").iterdir())
TRAINING = {"classification", "continual", "digits", "calibrate", "longtail", "robustness"}
TRAINING |= {"selfsupervised"}
PRESETS = [(task, name) for task in TASKS for name in available_presets(task)]


@pytest.mark.parametrize(("task", "preset"), PRESETS, ids=[f"{t}/{p}" for t, p in PRESETS])
def test_preset_follows_the_shared_schema(task: str, preset: str) -> None:
    cfg = load_config(task, preset)
    assert "output_dir" in cfg
    assert "num_threads" in cfg
    for old in ("out_dir", "output", "threads", "train"):
        assert old not in cfg, f"{task}/{preset} uses the old key {old!r}"
    if task != "bench_loss":  # its three tables have fixed names
        assert "output_name" in cfg
    if task in TRAINING:
        assert "trainer" in cfg and "seeds" in cfg
