"""Shared pytest set-up: small thread counts and deterministic seeds.

Torch's intra-op pool defaults to every core; the suite is sized for 2-core machines and
several tests start worker processes, so the pool is capped at 2 threads unless
``OMP_NUM_THREADS`` says otherwise (the suite is checked with 1 and 2 threads and under every
``MKL_CBWR`` path: no verdict may depend on them).
"""

from __future__ import annotations

import os

import pytest
import torch

if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
