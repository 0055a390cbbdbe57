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

import math
import multiprocessing as mp
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hug_plugins._checks import set_validation, validation_enabled
from hug_plugins.functional.fused import compile_mode, fused_enabled, set_compile, set_fused
from hug_plugins.losses import HUGLoss
from hug_plugins.reference import authors_hug_loss, cross_entropy_head_loss

METHODS = (
    "ce",
    "ce_compiled",
    "hug",
    "hug_compiled",
    "hug_unchecked",
    "hug_eager",
    "hug_reference",
    "hug_static",
    "hug_full",
    "naive",
    "hybrid",
    "hybrid_compiled",
)
"""``ce``: nn.Linear + cross-entropy; ``hug``: decoupled HUG, ``HUGLoss("pure")`` (fused path,
compiled where :func:`hug_plugins.functional.fused.set_compile`'s ``"auto"`` rule says so,
value checks on); ``hug_unchecked``: the same with value validation off (no device read per
step, see :func:`hug_plugins.set_validation`); ``hug_eager``: the fused path never compiled;
``hug_reference``: the composed reference path (``set_fused(False)``); ``hug_static``:
``HUGLoss("pure")`` with static proxies (no gradient: the ``O(B d)`` step); ``hug_full``: the full
O(C^2) energy; ``naive``: the authors' formula as written; ``ce_compiled`` / ``hug_compiled``:
the loss computation compiled whole (``torch.compile(..., fullgraph=True)``, Inductor), its
backward through AOTAutograd; ``hybrid`` / ``hybrid_compiled``: ``HUGLoss()``, the default
(the same + CE on the scaled-cosine logits, ``ce_weight=1.0``), eager / compiled whole."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _make_step(
    method: str, num_classes: int, batch_size: int, dim: int, device: torch.device, seed: int
) -> Callable[[], Tensor]:
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch_size, dim, generator=gen).to(device).requires_grad_(True)
    labels = torch.randint(0, num_classes, (batch_size,), generator=gen).to(device)
    if method in ("ce", "ce_compiled"):
        head = nn.Linear(dim, num_classes).to(device)
        ce_loss = cross_entropy_head_loss
        if method == "ce_compiled":
            ce_loss = torch.compile(cross_entropy_head_loss, fullgraph=True)

        def step() -> Tensor:
            features.grad = None
            head.zero_grad(set_to_none=True)
            loss = ce_loss(features, labels, head)
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
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    loss_fn = HUGLoss(
        "pure",
        energy_mode="full" if method == "hug_full" else "auto",
        ce_weight=1.0 if method.startswith("hybrid") else 0.0,
    )
    if method in ("hug_compiled", "hybrid_compiled"):
        compiled_loss = torch.compile(loss_fn, fullgraph=True)

        def compiled_step() -> Tensor:
            features.grad = None
            proxies.grad = None
            loss: Tensor = compiled_loss(features, labels, proxies)
            loss.backward()  # type: ignore[no-untyped-call]
            return loss.detach()

        return compiled_step
    if method == "hug_static":
        proxies.requires_grad_(False)
    validate = method != "hug_unchecked"
    compile_setting = "never" if method == "hug_eager" else compile_mode()
    fused_setting = method != "hug_reference"

    def hug_step() -> Tensor:
        features.grad = None
        proxies.grad = None
        previous = (validation_enabled(), compile_mode(), fused_enabled())
        set_validation(validate)
        set_compile(compile_setting)
        set_fused(fused_setting)
        try:
            loss: Tensor = loss_fn(features, labels, proxies)
            loss.backward()  # type: ignore[no-untyped-call]
            return loss.detach()
        finally:
            set_validation(previous[0])
            set_compile(previous[1])
            set_fused(previous[2])

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
    result = _interleave({method: step}, dev, repeats, warmup)[method]
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    result["peak_mib"] = max(peak, 0) / 2**20
    return result


def _interleave(
    steps: dict[str, Callable[[], Tensor]], device: torch.device, repeats: int, warmup: int
) -> dict[str, dict[str, Any]]:
    """Warms every step up, then times them round-robin; medians per step."""
    losses = {m: torch.zeros(()) for m in steps}
    first: dict[str, float] = {}
    for method, step in steps.items():
        for index in range(warmup):
            start = time.perf_counter()
            losses[method] = step()
            _sync(device)
            if index == 0:  # includes any compilation
                first[method] = time.perf_counter() - start
    _sync(device)
    times: dict[str, list[float]] = {m: [] for m in steps}
    for _ in range(repeats):
        for method, step in steps.items():
            start = time.perf_counter()
            losses[method] = step()
            _sync(device)
            times[method].append((time.perf_counter() - start) * 1e3)
            first.setdefault(method, times[method][-1] / 1e3)  # no warm-up: the first step
    return {
        m: {
            "ms": statistics.median(times[m]),
            "ms_min": min(times[m]),
            "first_s": first.get(m, math.nan),
            "steps": warmup + repeats,
            "loss": float(losses[m]),
        }
        for m in steps
    }


def measure_side_by_side(
    methods: Sequence[str],
    num_classes: int,
    batch_size: int = 256,
    dim: int = 512,
    device: str = "cpu",
    repeats: int = 10,
    warmup: int = 3,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Times several loss methods in one process, interleaved step by step.

    Every method gets ``warmup`` untimed steps (compilation, caches), then the timed steps run
    round-robin (``ce, hug, ..., ce, hug, ...``), so that a drift of the machine's speed
    (another process, frequency scaling) hits every method alike and the ratios stay fair.

    Returns:
        ``{method: {"ms": median ms, "ms_min": fastest ms, "steps": steps run, "loss": last
        loss}}``.
    """
    dev = torch.device(device)
    steps = {m: _make_step(m, num_classes, batch_size, dim, dev, seed) for m in methods}
    return _interleave(steps, dev, repeats, warmup)


SSL_METHODS = ("ntxent", "hug_criterion")
"""Self-supervised criteria: lightly's ``NTXentLoss`` and :class:`HUGCriterion` (defaults)."""


def _make_ssl_step(
    method: str, batch_size: int, dim: int, device: torch.device, seed: int
) -> Callable[[], Tensor]:
    from lightly.loss import NTXentLoss

    from hug_plugins.ssl import HUGCriterion

    if method not in SSL_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {SSL_METHODS}")
    gen = torch.Generator().manual_seed(seed)
    views = [
        torch.randn(batch_size, dim, generator=gen).to(device).requires_grad_(True)
        for _ in range(2)
    ]
    criterion: nn.Module = NTXentLoss() if method == "ntxent" else HUGCriterion()

    def step() -> Tensor:
        for view in views:
            view.grad = None
        loss: Tensor = criterion(*views)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss.detach()

    return step


def measure_ssl_side_by_side(
    batch_size: int,
    dim: int = 128,
    device: str = "cpu",
    repeats: int = 10,
    warmup: int = 3,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """``NTXentLoss`` vs ``HUGCriterion()`` on two views of ``batch_size`` embeddings,
    forward + backward, interleaved as in :func:`measure_side_by_side`."""
    dev = torch.device(device)
    steps = {m: _make_ssl_step(m, batch_size, dim, dev, seed) for m in SSL_METHODS}
    return _interleave(steps, dev, repeats, warmup)


TRAIN_METHODS = ("ce", "hug", "ce_compiled", "hug_compiled")
"""Training-step methods: eager, and model + loss compiled whole with a compiled optimizer step."""

TRAIN_MODELS = {
    "mlp": "digits MLP 64-128-128-32, 8x8 inputs",
    "cnn": "SmallCNN (width 32) + 128-d neck, 32x32x3 inputs",
    "resnet18": "ResNet-18 (CIFAR stem) + 128-d neck, 32x32x3 inputs",
}
"""Models of the end-to-end training-step benchmark."""


def _make_train_step(
    model_name: str,
    method: str,
    num_classes: int,
    batch_size: int,
    device: torch.device,
    seed: int,
) -> Callable[[], Tensor]:
    from harness.models import assemble_classifier, build_classifier
    from harness.objectives import CrossEntropyObjective, HUGObjective

    if method not in TRAIN_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {TRAIN_METHODS}")
    head = "linear" if method.startswith("ce") else "proxy"
    torch.manual_seed(seed)
    model: nn.Module
    if model_name == "mlp":
        body = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU())
        model = assemble_classifier(body, 128, num_classes, head=head, feature_dim=32)
        shape: tuple[int, ...] = (batch_size, 64)
    elif model_name in ("cnn", "resnet18"):
        model = build_classifier(model_name, num_classes, 3, feature_dim=128, head=head)
        shape = (batch_size, 3, 32, 32)
    else:
        raise ValueError(f"unknown model {model_name!r}; expected one of {list(TRAIN_MODELS)}")
    model = model.to(device).train()
    objective: nn.Module = (
        CrossEntropyObjective() if head == "linear" else HUGObjective(HUGLoss("pure"), model.head)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    update = optimizer.step

    def forward_loss(x: Tensor, y: Tensor) -> Tensor:
        features, logits = model(x)
        out: Tensor = objective(features, logits, y)
        return out

    if method.endswith("_compiled"):  # as PyTorch documents a compiled training step
        forward_loss = torch.compile(forward_loss, fullgraph=True)
        update = torch.compile(optimizer.step)
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(shape, generator=gen).to(device)
    labels = torch.randint(0, num_classes, (batch_size,), generator=gen).to(device)

    def step() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = forward_loss(inputs, labels)
        loss.backward()  # type: ignore[no-untyped-call]
        update()
        return loss.detach()

    return step


def measure_train_side_by_side(
    model: str,
    num_classes: int = 10,
    batch_size: int = 128,
    device: str = "cpu",
    repeats: int = 10,
    warmup: int = 3,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """One SGD training step (forward, loss, backward, update) of ``model`` with a linear
    head + cross-entropy vs a ProxyHead + ``HUGLoss("pure")``, interleaved as in
    :func:`measure_side_by_side`. Both models start from the same seeded backbone weights."""
    dev = torch.device(device)
    steps = {
        m: _make_train_step(model, m, num_classes, batch_size, dev, seed) for m in TRAIN_METHODS
    }
    return _interleave(steps, dev, repeats, warmup)


MEASUREMENTS: dict[str, Callable[..., Any]] = {
    "step": measure_loss_step,
    "side_by_side": measure_side_by_side,
    "ssl": measure_ssl_side_by_side,
    "train": measure_train_side_by_side,
}
"""The measurements by name, as :func:`measure_isolated` (and ``integrations/bench_loss.py``)
call them."""


def _worker(queue: Any, target: str, kwargs: dict[str, Any]) -> None:
    try:
        torch.set_num_threads(kwargs.pop("threads"))
        queue.put(("ok", MEASUREMENTS[target](**kwargs)))
    except Exception as exc:  # reported to the parent, which raises it
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def measure_isolated(
    threads: int | None = None, target: str = "step", **kwargs: Any
) -> dict[str, Any]:
    """Runs a measurement in a fresh ``spawn`` process and returns its result.

    ``target``: ``"step"`` (:func:`measure_loss_step`), ``"side_by_side"``
    (:func:`measure_side_by_side`), ``"ssl"`` (:func:`measure_ssl_side_by_side`) or
    ``"train"`` (:func:`measure_train_side_by_side`).

    Raises:
        RuntimeError: If the measurement failed or the process died (e.g. out of memory).
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    kwargs["threads"] = threads if threads is not None else torch.get_num_threads()
    proc = ctx.Process(target=_worker, args=(queue, target, kwargs))
    proc.start()
    proc.join()
    if queue.empty():
        raise RuntimeError(f"measurement process died with exit code {proc.exitcode}")
    status, payload = queue.get()
    if status != "ok":
        raise RuntimeError(str(payload))
    result: dict[str, Any] = payload
    return result
