"""The shared test set-up (``tests/conftest.py``) does what it says."""

from __future__ import annotations

import os

import torch


def test_thread_pool_is_capped() -> None:
    limit = int(os.environ.get("OMP_NUM_THREADS", "2"))
    assert 1 <= torch.get_num_threads() <= limit


def test_every_test_starts_from_seed_zero() -> None:
    first = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(first, torch.rand(3))
