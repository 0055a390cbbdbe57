"""Tests of harness.tables: summaries, headers and result tables."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from harness.tables import (
    MeanStd,
    command_string,
    format_mean_std,
    hardware_summary,
    standard_header_lines,
    summarize,
    write_tables,
)


def test_summarize_uses_sample_std() -> None:
    mean, std = summarize([2.0, 4.0, 6.0])
    assert mean == pytest.approx(4.0)
    assert std == pytest.approx(2.0)  # ddof=1: sqrt(8 / 2)
    assert summarize([3.5]) == MeanStd(3.5, 0.0)
    assert summarize(iter([1, 1, 1])).std == 0.0


@pytest.mark.parametrize("bad", [[], ["a", 1.0], [None]])
def test_summarize_rejects_bad_input(bad: list[object]) -> None:
    with pytest.raises(ValueError):
        summarize(bad)  # type: ignore[arg-type]


def test_format_mean_std() -> None:
    assert format_mean_std(2.3094, 0.1234) == "2.31 ± 0.12"
    assert format_mean_std(0.04123, 0.0031, digits=4) == "0.0412 ± 0.0031"
    with pytest.raises(ValueError, match="digits"):
        format_mean_std(1.0, 0.0, digits=-1)


def test_hardware_summary_and_header() -> None:
    text = hardware_summary()
    assert text.startswith("CPU: ")
    assert "cores" in text and "GPU:" in text and torch.__version__ in text
    lines = standard_header_lines(["integrations/digits.py", "--preset", "quick", "a=b c"])
    assert lines[0] == "Command: `python integrations/digits.py --preset quick 'a=b c'`"
    assert lines[1] == f"Hardware: {text}"
    assert command_string(["x.py"]) == "python x.py"


def test_write_tables_markdown_and_csv(tmp_path: Path) -> None:
    rows: list[dict[str, object]] = [
        {"method": "CE", "error": summarize([0.10, 0.20]), "nc1": 1.23456},
        {"method": "MHE|HUG", "error": summarize([0.05]), "nc1": None},
    ]
    md, csv_path = write_tables(
        rows, tmp_path / "out" / "res", ["Command: `x`", "Hardware: y"], digits={"error": 3}
    )
    assert md == tmp_path / "out" / "res.md" and csv_path == tmp_path / "out" / "res.csv"
    lines = md.read_text().splitlines()
    assert lines[0] == "Command: `x`" and lines[2] == "Hardware: y"
    assert "| method | error | nc1 |" in lines
    assert "| CE | 0.150 ± 0.071 | 1.23 |" in lines
    assert "| MHE\\|HUG | 0.050 ± 0.000 |  |" in lines
    with csv_path.open() as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == ["method", "error_mean", "error_std", "nc1"]
    assert float(table[0]["error_mean"]) == pytest.approx(0.15)
    assert float(table[0]["error_std"]) == pytest.approx(math.sqrt(0.005))
    assert float(table[0]["nc1"]) == pytest.approx(1.23456)  # full precision in the CSV
    assert table[1]["method"] == "MHE|HUG" and table[1]["nc1"] == ""
    assert [p.name for p in md.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_write_tables_defaults_and_errors(tmp_path: Path) -> None:
    md, _ = write_tables([{"a": 1}], tmp_path / "t", title="Demo", columns=["a"])
    text = md.read_text()
    assert text.startswith("# Demo\n") and "Command: `python " in text and "Hardware: CPU" in text
    with pytest.raises(ValueError, match="at least one row"):
        write_tables([], tmp_path / "t", [])
    with pytest.raises(ValueError, match="do not occur"):
        write_tables([{"a": 1}], tmp_path / "t", [], columns=["a", "zzz"])


def test_command_string_records_a_torchrun_launch() -> None:
    args = ["integrations/selfsupervised.py", "--preset", "quick"]
    assert command_string(args, {}) == "python integrations/selfsupervised.py --preset quick"
    env = {"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}
    assert command_string(["integrations/selfsupervised.py", "seeds=[0]"], env) == (
        "torchrun --nnodes=2 --nproc_per_node=2 integrations/selfsupervised.py 'seeds=[0]'"
    )
    assert command_string(["job.py"], {"WORLD_SIZE": "2"}).startswith("torchrun --nproc")


def test_summarize_runs_pairs_each_group_with_its_baseline_by_seed() -> None:
    from harness.tables import summarize_runs

    runs = [
        {"ratio": r, "method": m, "seed": s, "acc": base + r + s, "extra": float("nan")}
        for r in (1.0, 2.0)
        for m, base in (("CE", 10.0), ("HUG", 12.0))
        for s in (0, 1, 2)
        if not (m == "HUG" and s == 2)  # HUG lacks seed 2: paired over seeds 0, 1 only
    ]
    runs[0]["acc"] = 100.0  # CE ratio 1, seed 0 -> HUG seed 0 pairs with it
    rows = summarize_runs(
        runs, ["ratio", "method"], ["acc", "extra"], paired={"acc": "d"}, baseline={"method": "CE"}
    )
    assert [(r["ratio"], r["method"], r["seeds"]) for r in rows] == [
        (1.0, "CE", 3),
        (1.0, "HUG", 2),
        (2.0, "CE", 3),
        (2.0, "HUG", 2),
    ]
    assert rows[0]["d"] is None and rows[2]["d"] is None
    assert rows[1]["d"].mean == pytest.approx(((13.0 - 100.0) + (14.0 - 12.0)) / 2)
    assert rows[3]["d"] == (2.0, 0.0)
    assert rows[0]["extra"] is None  # no finite value
    with pytest.raises(ValueError, match="baseline"):
        summarize_runs(runs, ["method"], ["acc"], paired={"acc": "d"})
