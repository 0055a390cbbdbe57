"""End-to-end tests of integrations/selfsupervised.py on the quick preset with a tiny budget."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any


def _job() -> Any:
    return importlib.import_module("integrations.selfsupervised")


def test_quick_job_writes_tables(tmp_path: Path) -> None:
    stem = tmp_path / "ssl"
    rows = _job().main(
        [
            "--preset",
            "quick",
            "trainer.epochs=1",
            "seeds=[0]",
            "criteria=[hug,ntxent]",
            "eval.knn_k=20",
            f"output_dir={stem.parent}",
            f"output_name={stem.name}",
        ]
    )
    assert [r["criterion"] for r in rows] == ["HUGCriterion", "NTXentLoss"]
    assert all(0.0 <= r["knn_top1"][0] <= 1.0 for r in rows)
    assert rows[1]["knn_vs_NTXent"] is None  # the baseline's own row
    assert rows[0]["knn_vs_NTXent"].mean == rows[0]["knn_top1"].mean - rows[1]["knn_top1"].mean
    text = stem.with_name("ssl.md").read_text()
    assert "Command: `python integrations/selfsupervised.py --preset quick" in text
    assert "Hardware: CPU" in text and "| HUGCriterion | 1 |" in text
    assert stem.with_name("ssl_runs.csv").read_text().count("\n") == 3


def test_finished_runs_are_skipped_and_checkpoints_reloaded(tmp_path: Path) -> None:
    args = [
        "--preset",
        "quick",
        "trainer.epochs=2",
        "seeds=[0]",
        "criteria=[hug]",
        "eval.knn_k=20",
        f"output_dir={tmp_path}",
        "output_name=ssl",
        f"checkpoint_dir={tmp_path / 'ckpt'}",
    ]
    job = _job()
    first = job.main(args)
    log = tmp_path / "ssl_done.jsonl"
    assert log.read_text().count("\n") == 1
    assert len(list((tmp_path / "ckpt").glob("*.pt"))) == 1
    # the run log restores the finished run: nothing is trained, the row is the same
    assert job.main(args) == first
    assert log.read_text().count("\n") == 1
    # without the log, the finished checkpoint is reloaded, not retrained: same metrics
    log.unlink()
    again = job.main(args)
    assert again[0]["knn_top1"] == first[0]["knn_top1"]
    assert again[0]["gnc2_ratio"] == first[0]["gnc2_ratio"]
    assert again[0]["train_images_per_s"] is None  # NaN throughput: no epoch was trained
    runs = (tmp_path / "ssl_runs.csv").read_text().splitlines()
    header = runs[0].split(",")
    assert runs[1].split(",")[header.index("resumed_from_epoch")] == "2"
    # a changed setting of the criterion is another run: it trains, beside the first
    job.main([*args, "hug.s=3.0"])
    assert log.read_text().count("\n") == 2
    assert len(list((tmp_path / "ckpt").glob("*.pt"))) == 2
    runs = (tmp_path / "ssl_runs.csv").read_text().splitlines()
    assert runs[1].split(",")[header.index("resumed_from_epoch")] == "0"
