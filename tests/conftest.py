"""Shared pytest set-up: small thread counts and deterministic seeds.

Torch's intra-op pool defaults to every core; the suite is sized for 2-core machines and
several tests start worker processes, so the pool is capped at 2 threads unless
``OMP_NUM_THREADS`` says otherwise (the suite is checked with 1 and 2 threads and under every
``MKL_CBWR`` path: no verdict may depend on them).

Tests that compile get an Inductor cache of their own (one fresh folder per test run, through
``TORCHINDUCTOR_CACHE_DIR``): a verdict must not depend on what another process left in the
shared cache under the system temp folder.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest
import torch

_INDUCTOR_CACHE = tempfile.mkdtemp(prefix="hug-plugins-inductor-")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = _INDUCTOR_CACHE
atexit.register(shutil.rmtree, _INDUCTOR_CACHE, ignore_errors=True)

if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
