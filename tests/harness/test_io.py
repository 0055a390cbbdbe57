"""Tests of harness.io: atomic writes and the resumable run log."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from harness.io import atomic_torch_save, atomic_write_bytes, atomic_write_text


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


def test_run_log_resumes_and_ignores_a_cut_last_line(tmp_path: Path) -> None:
    from harness.io import RunLog

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
