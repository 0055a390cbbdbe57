"""Tests of hug_plugins.io: atomic writes, summaries and result tables."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from hug_plugins.io import (
    MeanStd,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_text,
    command_string,
    format_mean_std,
    hardware_summary,
    standard_header_lines,
    summarize,
    write_tables,
)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_text_creates_parents_and_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.txt"
    assert atomic_write_text(target, "first") == target
    assert target.read_text() == "first"
    atomic_write_text(target, "second ± ünïcode")
    assert target.read_text(encoding="utf-8") == "second ± ünïcode"
    assert _leftovers(target.parent) == []


def test_atomic_write_bytes_round_trip(tmp_path: Path) -> None:
    target = tmp_path / "blob.bin"
    atomic_write_bytes(target, b"\x00\x01\x02")
    assert target.read_bytes() == b"\x00\x01\x02"


def test_atomic_write_rejects_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="directory"):
        atomic_write_text(tmp_path, "x")


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.pt"
    atomic_torch_save({"w": torch.arange(3)}, target)
    with pytest.raises(Exception):  # noqa: B017 - whatever pickling raises
        atomic_torch_save({"bad": lambda: None}, target)  # lambdas cannot be pickled
    assert torch.equal(torch.load(target)["w"], torch.arange(3))
    assert _leftovers(tmp_path) == []


def test_atomic_torch_save_round_trip(tmp_path: Path) -> None:
    weight = torch.randn(4, 3)
    atomic_torch_save({"w": weight, "epoch": 7, "hist": [{"loss": 0.5}]}, tmp_path / "s.pt")
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)
    assert torch.equal(loaded["w"], weight)
    assert loaded["epoch"] == 7 and loaded["hist"] == [{"loss": 0.5}]


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
    assert _leftovers(md.parent) == []


def test_write_tables_defaults_and_errors(tmp_path: Path) -> None:
    md, _ = write_tables([{"a": 1}], tmp_path / "t", title="Demo", columns=["a"])
    text = md.read_text()
    assert text.startswith("# Demo\n") and "Command: `python " in text and "Hardware: CPU" in text
    with pytest.raises(ValueError, match="at least one row"):
        write_tables([], tmp_path / "t", [])
    with pytest.raises(ValueError, match="do not occur"):
        write_tables([{"a": 1}], tmp_path / "t", [], columns=["a", "zzz"])


def test_run_log_resumes_and_ignores_a_cut_last_line(tmp_path: Path) -> None:
    from hug_plugins.io import RunLog

    path = tmp_path / "runs.jsonl"
    log = RunLog(path, ("method", "seed"))
    log.append({"method": "ce", "seed": 0, "acc": 91.5})
    log.append({"method": "hug", "seed": 0, "acc": 93.0})
    with path.open("a") as handle:
        handle.write('{"method": "ce", "se')  # a write cut by a kill
    again = RunLog(path, ("method", "seed"))
    assert again.done({"method": "hug", "seed": 0}) and not again.done({"method": "ce", "seed": 1})
    assert again.get({"method": "ce", "seed": 0})["acc"] == 91.5
    with pytest.raises(KeyError):
        again.get({"method": "ce", "seed": 1})
