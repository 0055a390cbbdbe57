"""HUGCriterion(gather_distributed=True) under DDP equals one process on the global batch.

Two CPU processes (gloo, 127.0.0.1, a free port) each hold half of a batch. With
``gather_distributed=True`` every rank computes the loss of the global batch from the views
gathered with ``lightly.utils.dist.gather``; the gather's backward sums the gradients of all
ranks, so each rank's features get ``world_size`` times the global-loss gradient, and DDP's
averaging over ranks divides that back. The test checks exactly that: the loss on every rank
and the parameter gradients after DDP's averaging equal the single-process loss and gradients
on the concatenated batch (atol 1e-6), with and without labels, with three views, and with a
memory bank over two steps (the bank is filled from the gathered batch means). The model runs
in float64 so that the comparison tests the gradient algebra, not float32 summation order.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from hug_plugins.ssl import HUGCriterion

WORLD = 2
BATCH = 6  # per rank
DIM_IN, DIM_OUT = 5, 4

CASES: dict[str, dict[str, Any]] = {
    "two_views": {"views": 2, "labels": False, "bank": 0, "kwargs": {}},
    "labels": {"views": 2, "labels": True, "bank": 0, "kwargs": {"s": 2.0}},
    "three_views_gaussian": {
        "views": 3,
        "labels": False,
        "bank": 0,
        "kwargs": {"kernel": "gaussian"},
    },
    "memory_bank": {"views": 2, "labels": False, "bank": 16, "kwargs": {}},
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _data(case: dict[str, Any], step: int) -> tuple[Tensor, Tensor]:
    """Global inputs ``(WORLD * BATCH, views, DIM_IN)`` and labels of one step."""
    gen = torch.Generator().manual_seed(100 + step)
    inputs = torch.randn(WORLD * BATCH, case["views"], DIM_IN, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 4, (WORLD * BATCH,), generator=gen)
    return inputs, labels


def _build(case: dict[str, Any]) -> tuple[nn.Module, HUGCriterion]:
    torch.manual_seed(0)  # same weights and same initial memory bank everywhere
    model = nn.Sequential(nn.Linear(DIM_IN, 8), nn.Tanh(), nn.Linear(8, DIM_OUT)).double()
    bank = (case["bank"], DIM_OUT) if case["bank"] else 0
    criterion = HUGCriterion(memory_bank_size=bank, gather_distributed=True, **case["kwargs"])
    return model, criterion


def _step(
    model: nn.Module, criterion: HUGCriterion, case: dict[str, Any], inputs: Tensor, labels: Tensor
) -> Tensor:
    n, k, _ = inputs.shape
    # one forward pass over all views, then split into (n, k, DIM_OUT)
    out = model(inputs.reshape(n * k, DIM_IN)).reshape(n, k, DIM_OUT)
    views = [out[:, v] for v in range(k)]
    if k == 2:
        return criterion(views[0], views[1], labels=labels if case["labels"] else None)
    return criterion(views, labels=labels if case["labels"] else None)


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        results: dict[str, Any] = {}
        for name, case in CASES.items():
            model, criterion = _build(case)
            ddp = nn.parallel.DistributedDataParallel(model)
            steps = 2 if case["bank"] else 1
            for step in range(steps):
                inputs, labels = _data(case, step)
                local = slice(rank * BATCH, (rank + 1) * BATCH)
                ddp.zero_grad()
                loss = _step(ddp, criterion, case, inputs[local], labels[local])
                loss.backward()
            results[name] = {
                "loss": loss.detach(),
                "grads": [p.grad.detach().clone() for p in model.parameters()],
            }
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _reference() -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, case in CASES.items():
        model, criterion = _build(case)
        steps = 2 if case["bank"] else 1
        for step in range(steps):
            inputs, labels = _data(case, step)
            model.zero_grad()
            loss = _step(model, criterion, case, inputs, labels)
            loss.backward()
        results[name] = {
            "loss": loss.detach(),
            "grads": [p.grad.detach().clone() for p in model.parameters()],  # type: ignore[union-attr]
        }
    return results


@pytest.mark.timeout(120)
def test_gather_distributed_equals_single_process(tmp_path: Path) -> None:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    reference = _reference()
    for rank in range(WORLD):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        for name in CASES:
            got, want = results[name], reference[name]
            torch.testing.assert_close(got["loss"], want["loss"], rtol=0, atol=1e-6, msg=name)
            for g, w in zip(got["grads"], want["grads"], strict=True):
                torch.testing.assert_close(
                    g, w, rtol=0, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}"
                )
            # gradients are not trivially zero
            assert max(float(g.abs().max()) for g in got["grads"]) > 1e-3
