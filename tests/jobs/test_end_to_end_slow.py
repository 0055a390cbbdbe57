"""Slow end-to-end runs of the benchmark scripts as a user runs them (``pytest -m slow``).

Each script runs in a fresh process with its shipped preset, writing into a temporary folder;
the checks are on the tables it writes (every method and seed present, finite figures), never
on how well a method did.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _run(script: str, *args: str, timeout: int = 1800) -> str:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "integrations" / script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_digits_default_preset(tmp_path: Path) -> None:
    """The README's main job, full preset: 6 methods x 5 seeds."""
    out = _run("digits.py", f"output_dir={tmp_path}", "progress=false")
    assert "| HUG (default) |" in out
    rows = _rows(tmp_path / "digits.csv")
    assert [r["method"] for r in rows] == [
        "CE",
        "HUG (default)",
        "HUG (distance pull, previous default)",
        "MHE-HUG (paper)",
        "MHS-HUG (paper)",
        "MGD-HUG (paper)",
    ]
    runs = _rows(tmp_path / "digits_runs.csv")
    assert sorted({int(r["seed"]) for r in runs}) == [0, 1, 2, 3, 4] and len(runs) == 30
    for run in runs:
        for key in ("test_error", "nc1", "gnc2_ratio", "unit_nc4_mismatch"):
            assert math.isfinite(float(run[key]))


@pytest.mark.parametrize(
    ("script", "stem", "methods"),
    [
        ("longtail.py", "longtail_quick", 2),
        ("robustness.py", "robustness_quick", 2),
        ("classification.py", "classification_quick", 2),
    ],
)
def test_quick_presets_run_to_completion(
    script: str, stem: str, methods: int, tmp_path: Path
) -> None:
    _run(script, "--preset", "quick", f"output_dir={tmp_path}", "seeds=[0,1]")
    tables = sorted(tmp_path.glob(f"{stem}*.csv"))
    assert tables, sorted(p.name for p in tmp_path.iterdir())
    summary = _rows(tables[0])
    assert len(summary) >= methods
    for row in summary:
        numbers = [v for k, v in row.items() if k.endswith("_mean") and v not in ("", None)]
        assert numbers and all(math.isfinite(float(v)) for v in numbers)
