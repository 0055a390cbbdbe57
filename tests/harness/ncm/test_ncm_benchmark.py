"""Tests of harness.ncm.benchmark and integrations/ncm.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from harness.ncm.benchmark import NCMBenchSettings, make_problem, run_benchmark

from integrations import ncm as job


def test_near_ties_sit_on_bisectors_and_settings_reject_unknown_keys() -> None:
    means, queries = make_problem("synthetic", 50, 5, 8, 10, None, 0)
    d = torch.cdist(queries.double(), means.double()).sort(dim=1).values
    gap = (d[:, 1:] - d[:, :-1]).min(dim=1).values  # closest pair of equidistant means
    assert float(gap[:10].max()) < 1e-4 < float(gap[10:].median())  # near ties come first
    with pytest.raises(ValueError, match="unknown NCM benchmark settings"):
        NCMBenchSettings.from_mapping({"n_querys": 5})
    with pytest.raises(ValueError, match="dataset must be"):
        make_problem("svhn", 5, 2, 4, 0, None, 0)


def test_exact_search_never_errs_where_the_plain_matmul_may() -> None:
    settings = NCMBenchSettings(
        n_queries=2000, dim=32, num_classes=(50,), check_queries=500, near_ties=200,
        methods=("ncm", "torch_matmul"), repeats=2,
    )  # fmt: skip
    rows = {(r["dataset"], r["method"]): r for r in run_benchmark(settings).rows}
    for dataset in ("synthetic", "real"):
        assert rows[(dataset, "ncm")]["exact"] == "0/500"
        assert rows[(dataset, "ncm")]["vs_matmul"] > 0


def test_job_writes_the_table(tmp_path: Path) -> None:
    args = ["--preset", "quick", "n_queries=600", "num_classes=[20]", "repeats=1"]
    rows = job.main([*args, "check_queries=300", "near_ties=50", f"output_dir={tmp_path}"])
    assert len(rows) == 6  # 2 datasets x 3 methods
    text = (tmp_path / "ncm_quick.md").read_text(encoding="utf-8")
    assert "Command: `python integrations/ncm.py --preset quick" in text and "| ncm |" in text
    assert (tmp_path / "ncm_quick.csv").read_text(encoding="utf-8").count("\n") == 7
