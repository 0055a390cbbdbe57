"""Where a training run executes: threads, seeds, devices, torch.distributed, RNG states."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from harness.train.config import require_int

# --------------------------------------------------------------------------- environment


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Runs the ``with`` block with ``torch.set_num_threads(num_threads)``, then restores it.

    Args:
        num_threads: Intra-op CPU threads; ``None`` leaves torch's setting alone.

    Raises:
        ValueError: If ``num_threads`` is not ``None`` and below 1.

    Example:
        >>> before = torch.get_num_threads()
        >>> with torch_threads(1):
        ...     torch.get_num_threads()
        1
        >>> torch.get_num_threads() == before
        True
    """
    if num_threads is not None and (isinstance(num_threads, bool) or int(num_threads) < 1):
        raise ValueError(f"num_threads must be >= 1 or null, got {num_threads!r}")
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def seed_everything(seed: int) -> None:
    """Seeds Python's ``random``, NumPy's global generator and torch (CPU and CUDA).

    Args:
        seed: A non-negative integer.

    Raises:
        ValueError: If ``seed`` is not a non-negative integer.

    Example:
        >>> seed_everything(3); a = torch.rand(1)
        >>> seed_everything(3); bool(torch.equal(a, torch.rand(1)))
        True
    """
    require_int("seed", seed, 0)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def distributed_info() -> tuple[int, int]:
    """Returns ``(rank, world_size)``; ``(0, 1)`` when torch.distributed is not initialized."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Returns whether this process is rank 0 (always true without torch.distributed)."""
    return distributed_info()[0] == 0


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turns a device spec into a :class:`torch.device`.

    ``"auto"`` picks CUDA when available, else the CPU. Under torch.distributed, a bare
    ``"cuda"`` (or ``"auto"`` on a GPU machine) means the GPU ``LOCAL_RANK`` of this process.

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a :class:`torch.device`.

    Returns:
        The device.

    Raises:
        ValueError: For an unparsable spec or a CUDA device on a machine without CUDA.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(device, torch.device):
        resolved = device
    elif device == "auto":
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"invalid device {device!r}: {exc}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} requested but CUDA is not available")
        if resolved.index is None:
            local_rank = int(os.environ.get("LOCAL_RANK", "0")) if distributed_info()[1] > 1 else 0
            resolved = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return resolved


def init_distributed_from_env(backend: str | None = None) -> bool:
    """Initializes :mod:`torch.distributed` when the process was started by ``torchrun``.

    Does nothing (and returns ``False``) when ``WORLD_SIZE`` is unset or 1; returns ``True`` when
    a process group is (already) initialized. Scripts call it first thing so they run unchanged
    with ``python job.py`` and ``torchrun --nproc_per_node=N job.py``.

    Args:
        backend: ``"nccl"``, ``"gloo"``...; defaults to NCCL with CUDA, else gloo.

    Returns:
        Whether torch.distributed is initialized.

    Example:
        >>> init_distributed_from_env()  # a plain process
        False
    """
    if dist.is_available() and dist.is_initialized():
        return True
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def unwrap_model(model: nn.Module) -> nn.Module:
    """Returns the module inside a DistributedDataParallel/DataParallel wrapper, else ``model``."""
    inner = getattr(model, "module", None)
    if isinstance(model, (DistributedDataParallel, nn.DataParallel)) and isinstance(
        inner, nn.Module
    ):
        return inner
    return model


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Moves every tensor in a (nested) batch to ``device``.

    Tuples (named tuples too), lists and mappings are rebuilt; everything else is returned
    unchanged.

    Example:
        >>> move_to_device({"x": torch.ones(1), "ids": ["a"]}, torch.device("cpu"))
        {'x': tensor([1.]), 'ids': ['a']}
    """
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(move_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seeds NumPy and ``random`` from the worker's torch seed."""
    del worker_id
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed seed for the data order of ``epoch``; depends only on ``(seed, epoch)``."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0])


def capture_rng() -> dict[str, Any]:
    state = np.random.get_state()
    if isinstance(state, dict):  # pragma: no cover - only with legacy=False
        raise RuntimeError("unexpected NumPy RNG state format")
    return {
        "python": random.getstate(),
        "numpy": (
            state[0],
            torch.from_numpy(np.array(state[1], copy=True)),
            int(state[2]),
            int(state[3]),
            float(state[4]),
        ),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda_states = list(state.get("cuda", []))
    if cuda_states and torch.cuda.is_available():
        for index in range(min(len(cuda_states), torch.cuda.device_count())):
            torch.cuda.set_rng_state(cuda_states[index], index)
