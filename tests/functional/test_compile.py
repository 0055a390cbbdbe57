"""HUG under torch.compile: no graph break, the values of eager, checks without host syncs."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
import torch._dynamo as dynamo

from hug_plugins import ClassMeanHUGLoss, HUGCriterion, HUGLoss, ProxyHead, _checks
from hug_plugins.functional import fused

B, D = 16, 8


def _case(preset: str, num_classes: int, static: bool, **overrides: Any) -> tuple[Any, ...]:
    gen = torch.Generator().manual_seed(num_classes)
    features = torch.randn(B, D, generator=gen)
    proxies = torch.randn(num_classes, D, generator=gen).requires_grad_(not static)
    return HUGLoss(preset, **overrides), features, torch.arange(B) % num_classes, proxies


CASES = [
    (preset, c, static, mode)
    for preset in ("default", "pure", "mhs", "mgd", "mhe_sum")
    for c, mode in ((5, "full"), (40, "rows"))
    for static in (False, True)
    if not (preset == "mgd" and mode == "rows")
]


def _breaks(fn: Callable[..., Any], *args: Any) -> tuple[int, list[str]]:
    dynamo.reset()
    explained = dynamo.explain(fn)(*args)
    return explained.graph_break_count, [str(b.reason)[:200] for b in explained.break_reasons]


@pytest.mark.parametrize(("preset", "num_classes", "static", "mode"), CASES)
def test_losses_trace_without_a_graph_break(
    preset: str, num_classes: int, static: bool, mode: str
) -> None:
    loss_fn, features, labels, proxies = _case(preset, num_classes, static)
    assert _breaks(loss_fn, features.requires_grad_(True), labels, proxies) == (0, [])


def test_hybrid_class_mean_and_criterion_trace_without_a_graph_break() -> None:
    loss_fn, features, labels, proxies = _case("default", 5, False, ce_weight=1.0)
    assert _breaks(loss_fn, features, labels, proxies) == (0, [])
    assert _breaks(ClassMeanHUGLoss(5), features, labels) == (0, [])
    criterion = HUGCriterion()
    assert _breaks(criterion, features, torch.randn(B, D)) == (0, [])


@pytest.mark.parametrize(("preset", "num_classes", "static", "mode"), CASES)
def test_compiled_fullgraph_values_and_gradients_equal_eager(
    preset: str, num_classes: int, static: bool, mode: str
) -> None:
    loss_fn, features, labels, proxies = _case(preset, num_classes, static)
    results = []
    for fn in (loss_fn, torch.compile(loss_fn, fullgraph=True, backend="aot_eager")):
        dynamo.reset()
        f = features.clone().requires_grad_(True)
        p = proxies.detach().clone().requires_grad_(not static)
        loss = fn(f, labels, p)
        loss.backward()
        terms = loss_fn.last_terms  # logged terms stay available under compilation
        assert terms is not None
        results.append([loss.detach(), terms.inter, terms.intra, f.grad, p.grad])
    for eager, compiled in zip(*results, strict=True):
        if eager is None:
            assert compiled is None
        else:
            torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


def _step_breaks(head_and_loss: tuple[torch.nn.Module, Callable[..., Any]]) -> list[str]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(D, 16), torch.nn.ReLU(), torch.nn.Linear(16, D))
    head, loss = head_and_loss
    optimizer = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=0.1, momentum=0.9)

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        value = loss(model(x), y)
        value.backward()
        optimizer.step()
        optimizer.zero_grad()
        return value.detach()

    return _breaks(step, torch.randn(B, D), torch.arange(B) % 5)[1]


def test_a_training_step_breaks_only_where_pytorch_does() -> None:
    """Model + HUG + backward + optimizer step: the only breaks are PyTorch's own (the backward
    call and the optimizer's deliberate ones), exactly those of the same step with CE."""
    head = ProxyHead(5, D)
    hug_loss = HUGLoss()
    linear = torch.nn.Linear(D, 5)
    hug = _step_breaks((head, lambda f, y: hug_loss(f, y, head.proxies)))
    ce = _step_breaks((linear, lambda f, y: torch.nn.functional.cross_entropy(linear(f), y)))
    assert hug == ce and hug  # the same PyTorch breaks, none from HUG


def test_compiled_training_step_matches_eager() -> None:
    """The compiled step as PyTorch documents it: model + loss compiled whole (fullgraph),
    backward through AOTAutograd, the optimizer step compiled."""
    losses = []
    for compiled in (False, True):
        dynamo.reset()
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(D, 16), torch.nn.ReLU(), torch.nn.Linear(16, D))
        head, loss_fn = ProxyHead(5, D), HUGLoss()
        optimizer = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=0.1)
        forward = _model_and_loss(model, head, loss_fn)

        run = torch.compile(forward, fullgraph=True, backend="aot_eager") if compiled else forward
        update = torch.compile(optimizer.step, backend="aot_eager") if compiled else optimizer.step
        x, y = torch.randn(B, D, generator=torch.Generator().manual_seed(1)), torch.arange(B) % 5
        trace = []
        for _ in range(3):
            loss = run(x, y)
            loss.backward()
            update()
            optimizer.zero_grad()
            trace.append(float(loss.detach()))
        losses.append(trace)
    assert losses[0][0] > losses[0][-1]  # the steps train
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=1e-5, atol=0)


def _model_and_loss(
    model: torch.nn.Module, head: ProxyHead, loss_fn: HUGLoss
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss: torch.Tensor = loss_fn(model(x), y, head.proxies)
        return loss

    return forward


def test_value_checks_under_compilation_are_device_asserts() -> None:
    loss_fn, features, labels, proxies = _case("default", 5, False)
    dynamo.reset()
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    bad = features.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(RuntimeError, match="features contains non-finite values"):
        compiled(bad, labels, proxies)
    with pytest.raises(RuntimeError, match="labels out of range"):
        compiled(features, labels + 5, proxies)
    with pytest.raises(ValueError, match="non-finite"):  # eager on the CPU: a ValueError
        loss_fn(bad, labels, proxies)


@contextmanager
def _no_host_reads() -> Iterator[None]:
    """Fails on every way a tensor's value reaches the host (what a CUDA sync would be)."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a device value was read on the host")

    names = ("tolist", "item", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy")
    saved = {name: getattr(torch.Tensor, name) for name in names}
    try:
        for name in names:
            setattr(torch.Tensor, name, refuse)
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


@pytest.mark.parametrize(("preset", "num_classes", "static", "mode"), CASES)
def test_the_gpu_path_reads_nothing_back_from_the_device(
    preset: str, num_classes: int, static: bool, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU the value checks are device asserts; every path of the loss, forward and
    backward, then runs without one host read (checked on the CPU by forcing that path)."""
    monkeypatch.setattr(_checks, "asynchronous_checks", lambda x: True)
    monkeypatch.setattr(fused, "_want_compiled", lambda pairs, device: False)
    loss_fn, features, labels, proxies = _case(preset, num_classes, static)
    features.requires_grad_(True)
    with _no_host_reads():
        for _ in range(2):  # the static cache's first fill and its reuse
            loss_fn(features, labels, proxies).backward()
    assert features.grad is not None


def test_a_corrupt_compile_cache_falls_back_to_eager_with_one_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A compiled kernel that cannot load (e.g. a 0-byte .so left in the cache by a killed
    compile) gives the documented fallback: one RuntimeWarning, then eager, the same values."""
    loss_fn, features, labels, proxies = _case("pure", 40, False, energy_mode="rows")
    fused.set_compile("never")
    want = loss_fn(features, labels, proxies)

    def corrupt(fn: Callable[..., Any], device: torch.device, size: int) -> Callable[..., Any]:
        def load(*args: Any) -> Any:
            raise ImportError(f"{os.sep}cache{os.sep}ab.so: file too short")

        return fused._with_eager_fallback(fn, load)

    monkeypatch.setattr(fused, "_compiled", corrupt)
    monkeypatch.setattr(fused, "_compile_failed", False)
    fused.set_compile("always")
    try:
        with pytest.warns(RuntimeWarning, match="running eager"):
            got = loss_fn(features, labels, proxies)
    finally:
        fused.set_compile("auto")
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert fused._compile_failed
