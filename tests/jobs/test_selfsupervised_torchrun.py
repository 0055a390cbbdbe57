"""``integrations/selfsupervised.py`` under ``torchrun --nproc_per_node=2`` (gloo on CPU).

The slow test runs the quick preset (1 seed, 1 epoch) once under torchrun with 2 processes and
once as a single process, with the same overrides, and compares the result files. The fast
tests check the helpers that make the two comparable (global batch split, image count,
launch command, per-rank augmentation streams).
"""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "integrations" / "selfsupervised.py"
METHODS = ["HUGCriterion", "NTXentLoss", "HypersphereLoss"]
OVERRIDES = ["trainer.epochs=1", "seeds=[0]", "eval.knn_k=50"]


def _script() -> ModuleType:
    return importlib.import_module("integrations.selfsupervised")


# ----------------------------------------------------------------------------- fast


# ----------------------------------------------------------------------------- slow


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _table(md: Path) -> tuple[str, list[str]]:
    """The markdown table's header row and its body rows."""
    lines = [line for line in md.read_text().splitlines() if line.startswith("|")]
    return lines[0], lines[2:]


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_torchrun_two_processes_matches_single_process_tables(tmp_path: Path) -> None:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    ddp = _run(
        [
            *torchrun,
            "--nproc_per_node=2",
            str(SCRIPT),
            "--preset",
            "quick",
            *OVERRIDES,
            f"output_dir={ddp_dir}",
            "output_name=ssl",
        ],
        timeout=400,
    )
    single = _run(
        [
            *[sys.executable, str(SCRIPT), "--preset", "quick", *OVERRIDES],
            *[f"output_dir={single_dir}", "output_name=ssl"],
        ],
        timeout=180,
    )

    # rank 0 alone wrote the files (no leftovers of the atomic writes); same names both ways
    names = ["ssl.csv", "ssl.md", "ssl_done.jsonl", "ssl_runs.csv", "ssl_runs.md"]
    assert sorted(p.name for p in ddp_dir.iterdir()) == names
    assert sorted(p.name for p in single_dir.iterdir()) == names

    # both ranks took part, each with half of the global batch of 128
    for rank in (0, 1):
        assert f"[ssl] rank {rank}/2: 674 of 1348 training images" in ddp.stdout
    assert "batch 64 per process (128 global)" in ddp.stdout
    assert "[ssl] rank" not in single.stdout
    # the table is printed once (rank 0), like the single-process run
    assert ddp.stdout.count("| criterion |") == single.stdout.count("| criterion |") == 1

    ddp_md, single_md = (ddp_dir / "ssl.md").read_text(), (single_dir / "ssl.md").read_text()
    assert "Command: `torchrun --nproc_per_node=2 " in ddp_md
    assert "= 64 x world_size=2 (torch.distributed backend: gloo)" in ddp_md
    assert "Command: `python " in single_md
    assert "= 128 x world_size=1 (torch.distributed backend: none)" in single_md

    # same table format: markdown header row, CSV columns, methods in the same order
    for stem in ("ssl", "ssl_runs"):
        ddp_head, ddp_rows = _table(ddp_dir / f"{stem}.md")
        single_head, single_rows = _table(single_dir / f"{stem}.md")
        assert ddp_head == single_head
        assert len(ddp_rows) == len(single_rows) == 3
    ddp_csv, single_csv = _csv(ddp_dir / "ssl.csv"), _csv(single_dir / "ssl.csv")
    assert list(ddp_csv[0]) == list(single_csv[0])
    assert [r["criterion"] for r in ddp_csv] == [r["criterion"] for r in single_csv] == METHODS
    ddp_runs = _csv(ddp_dir / "ssl_runs.csv")
    assert list(ddp_runs[0]) == list(_csv(single_dir / "ssl_runs.csv")[0])
    for row in ddp_csv + ddp_runs:
        # the paired column is empty in the baseline's own row (NTXentLoss) only
        blank = {k for k, v in row.items() if v == ""}
        assert blank <= (
            {"knn_vs_NTXent_mean", "knn_vs_NTXent_std"}
            if row["criterion"] == "NTXentLoss"
            else set()
        ), row
        values = {k: float(v) for k, v in row.items() if k != "criterion" and k not in blank}
        assert all(math.isfinite(v) for v in values.values()), row
    for row in ddp_csv:
        assert 0.0 <= float(row["knn_top1_mean"]) <= 1.0
        assert 0.0 <= float(row["nc4_agreement_mean"]) <= 1.0
        assert float(row["train_images_per_s_mean"]) > 0

    # HUGCriterion and NTXentLoss gather both ranks: the loss is that of the global batch of
    # 128, close to the single-process loss (without the gather NTXentLoss would see 64 images
    # per rank and its loss would start at log(127) instead of log(255), about 0.7 lower)
    single_loss = {r["criterion"]: float(r["final_loss_mean"]) for r in single_csv}
    for row in ddp_csv[:2]:
        assert abs(float(row["final_loss_mean"]) - single_loss[row["criterion"]]) < 0.2, row
