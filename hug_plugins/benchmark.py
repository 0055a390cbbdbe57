"""Timing and peak-memory harness for loss steps (used by ``integrations/bench_loss.py``).

Each measurement runs in a fresh process (``spawn``) so that the peak resident memory of one
configuration does not leak into the next: on CPU the extra peak is ``ru_maxrss`` after the
timed steps minus ``ru_maxrss`` after set-up; on CUDA it is ``max_memory_allocated`` minus the
memory allocated after set-up. Times are medians over ``repeats`` forward+backward steps after
``warmup`` steps, with device synchronisation.

Example:
    >>> result = measure_loss_step("ce", num_classes=10, batch_size=8, dim=4, repeats=2, warmup=1)
    >>> result["ms"] > 0
    True
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from hug_plugins._checks import set_validation, validation_enabled
from hug_plugins.losses import HUGLoss
from hug_plugins.reference import authors_hug_loss, cross_entropy_head_loss

METHODS = ("ce", "hug", "hug_unchecked", "hug_full", "naive")
"""``ce``: nn.Linear + cross-entropy; ``hug``: MHE-HUG in its default (auto) energy mode;
``hug_unchecked``: the same with value validation off (no device read per step, see
:func:`hug_plugins.set_validation`); ``hug_full``: MHE-HUG with the full O(C^2) energy;
``naive``: the authors' formula as written."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _make_step(
    method: str, num_classes: int, batch_size: int, dim: int, device: torch.device, seed: int
) -> Callable[[], Tensor]:
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch_size, dim, generator=gen).to(device).requires_grad_(True)
    labels = torch.randint(0, num_classes, (batch_size,), generator=gen).to(device)
    if method == "ce":
        head = nn.Linear(dim, num_classes).to(device)

        def step() -> Tensor:
            features.grad = None
            head.zero_grad(set_to_none=True)
            loss = cross_entropy_head_loss(features, labels, head)
            loss.backward()  # type: ignore[no-untyped-call]
            return loss.detach()

        return step
    proxies = nn.Parameter(torch.randn(num_classes, dim, generator=gen).to(device))
    if method == "naive":

        def naive_step() -> Tensor:
            features.grad = None
            proxies.grad = None
            loss = authors_hug_loss(features, labels, proxies)
            loss.backward()  # type: ignore[no-untyped-call]
            return loss.detach()

        return naive_step
    if method not in ("hug", "hug_unchecked", "hug_full"):
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    mode = "full" if method == "hug_full" else "auto"
    loss_fn = HUGLoss.preset("mhe", energy_mode=mode)
    validate = method != "hug_unchecked"

    def hug_step() -> Tensor:
        features.grad = None
        proxies.grad = None
        previous = validation_enabled()
        set_validation(validate)
        try:
            loss: Tensor = loss_fn(features, labels, proxies)
            loss.backward()  # type: ignore[no-untyped-call]
            return loss.detach()
        finally:
            set_validation(previous)

    return hug_step


def measure_loss_step(
    method: str,
    num_classes: int,
    batch_size: int = 256,
    dim: int = 512,
    device: str = "cpu",
    repeats: int = 10,
    warmup: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Times one forward+backward step of a loss and measures its extra peak memory.

    Runs in the calling process; :func:`measure_isolated` wraps it in a fresh one.

    Args:
        method: One of :data:`METHODS`.
        num_classes: Number of classes ``C``.
        batch_size: Batch size ``B``.
        dim: Feature dimension ``d``.
        device: Torch device string.
        repeats: Timed steps (the median is reported).
        warmup: Untimed steps first.
        seed: Seed of the inputs.

    Returns:
        ``{"ms": median ms, "ms_min": fastest ms, "peak_mib": extra peak MiB, "steps": steps
        run, "loss": loss value of the last step}`` (the last two let a caller check that the
        intended loss was timed).
    """
    dev = torch.device(device)
    step = _make_step(method, num_classes, batch_size, dim, dev, seed)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    steps = 0
    loss = torch.zeros(())
    for _ in range(warmup):
        loss = step()
        steps += 1
    _sync(dev)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        loss = step()
        steps += 1
        _sync(dev)
        times.append((time.perf_counter() - start) * 1e3)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {
        "ms": statistics.median(times),
        "ms_min": min(times),
        "peak_mib": max(peak, 0) / 2**20,
        "steps": steps,
        "loss": float(loss),
    }


def _worker(queue: Any, kwargs: dict[str, Any]) -> None:
    try:
        torch.set_num_threads(kwargs.pop("threads"))
        queue.put(("ok", measure_loss_step(**kwargs)))
    except Exception as exc:  # reported to the parent, which raises it
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def measure_isolated(threads: int | None = None, **kwargs: Any) -> dict[str, Any]:
    """Runs :func:`measure_loss_step` in a fresh ``spawn`` process and returns its result.

    Raises:
        RuntimeError: If the measurement failed or the process died (e.g. out of memory).
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    kwargs["threads"] = threads if threads is not None else torch.get_num_threads()
    proc = ctx.Process(target=_worker, args=(queue, kwargs))
    proc.start()
    proc.join()
    if queue.empty():
        raise RuntimeError(f"measurement process died with exit code {proc.exitcode}")
    status, payload = queue.get()
    if status != "ok":
        raise RuntimeError(str(payload))
    result: dict[str, Any] = payload
    return result
