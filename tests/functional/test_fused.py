"""The fused P-HUG node and the static-proxy shortcut equal the reference path (float64)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from hug_plugins.functional import fused
from hug_plugins.functional import hug as functional_hug
from hug_plugins.functional.fused import set_compile, set_fused
from hug_plugins.losses import HUGLoss, preset_config


@pytest.fixture(autouse=True)
def _restore_switches() -> Iterator[None]:
    yield
    set_fused(True)
    set_compile("auto")


def _loss_and_grads(
    config: Any, features: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor, on: bool
) -> list[torch.Tensor]:
    set_fused(on)
    features.grad = None
    proxies.grad = None
    terms = HUGLoss(config).terms(features, labels, proxies)
    terms.loss.backward()
    assert features.grad is not None and proxies.grad is not None
    out = [terms.loss.detach(), terms.inter.detach(), terms.intra.detach()]
    return [*out, features.grad.clone(), proxies.grad.clone()]


def _inputs(num_classes: int, batch: int = 12, dim: int = 7, seed: int = 0) -> tuple[Any, ...]:
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, dim, generator=gen, dtype=torch.float64).requires_grad_(True)
    proxies = torch.randn(num_classes, dim, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, num_classes, (batch,), generator=gen)
    return features, labels, proxies.requires_grad_(True)


def _assert_same(fast: list[torch.Tensor], reference: list[torch.Tensor]) -> None:
    for got, want in zip(fast, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("preset", ["pure", "mhe", "mhs", "authors", "mhe_sum", "mhs_sum"])
@pytest.mark.parametrize("mode", ["full", "rows"])
@pytest.mark.parametrize("intra", ["distance", "squared_distance"])
@pytest.mark.parametrize("detach", [True, False])
def test_fused_equals_reference(preset: str, mode: str, intra: str, detach: bool) -> None:
    config = preset_config(preset, energy_mode=mode, intra=intra, detach_proxies=detach)
    assert fused.fused_supported(config, 12, 9)
    features, labels, proxies = _inputs(num_classes=9)
    fast = _loss_and_grads(config, features, labels, proxies, on=True)
    reference = _loss_and_grads(config, features, labels, proxies, on=False)
    _assert_same(fast, reference)


@pytest.mark.parametrize(
    "overrides",
    [
        {"kernel": "gaussian"},
        {"kernel": "log"},
        {"kernel": "riesz", "s": 1.0},
        {"kernel": "riesz", "s": -1.0},
        {"intra_reduction": "sample_mean"},
        {"reduction": "sum", "kernel": "gaussian"},
    ],
)
@pytest.mark.parametrize("num_classes", [5, 40])  # auto mode: full (C <= B) and rows
def test_fused_equals_reference_for_every_kernel(
    overrides: dict[str, Any], num_classes: int
) -> None:
    config = HUGLoss("pure", **overrides).config
    features, labels, proxies = _inputs(num_classes)
    fast = _loss_and_grads(config, features, labels, proxies, on=True)
    _assert_same(fast, _loss_and_grads(config, features, labels, proxies, on=False))


def test_fused_handles_zero_vectors_like_the_reference() -> None:
    features, labels, proxies = _inputs(num_classes=6)
    with torch.no_grad():
        features[0] = 0.0
        proxies[labels[1]] = 0.0
    config = HUGLoss("pure", energy_mode="rows").config
    fast = _loss_and_grads(config, features, labels, proxies, on=True)
    assert all(bool(torch.isfinite(t).all()) for t in fast)
    _assert_same(fast, _loss_and_grads(config, features, labels, proxies, on=False))


def test_unsupported_settings_take_the_reference_path() -> None:
    for overrides in (
        {"inter": "mgd", "energy_mode": "full"},
        {"intra": "max_distance"},
        {"ce_weight": 1.0},
    ):
        assert not fused.fused_supported(HUGLoss("pure", **overrides).config, 8, 4)  # type: ignore[arg-type]
    assert not fused.fused_supported(HUGLoss("pure").config, 1 << 14, 1 << 13)  # block too large
    set_fused(False)
    assert not fused.fused_supported(HUGLoss("pure").config, 8, 4)


@pytest.mark.parametrize("mode", ["rows", "full"])
def test_compiled_path_equals_eager(mode: str) -> None:
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("torch.compile needs a C++ compiler on the CPU")
    config = HUGLoss("pure", energy_mode=mode).config
    features, labels, proxies = _inputs(num_classes=30)
    set_compile("never")
    eager = _loss_and_grads(config, features, labels, proxies, on=True)
    set_compile("always")
    compiled = _loss_and_grads(config, features, labels, proxies, on=True)
    assert not fused._compile_failed
    _assert_same(compiled, eager)


def test_set_compile_rejects_unknown_modes() -> None:
    with pytest.raises(ValueError, match="compile mode"):
        set_compile("sometimes")  # type: ignore[arg-type]


def test_static_proxies_step_is_exact_and_computes_the_energy_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    features, labels, proxies = _inputs(num_classes=40)  # C > B: rows mode if learnable
    static = proxies.detach().clone()
    calls = []
    original = functional_hug.inter_term

    def counting(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(functional_hug, "inter_term", counting)
    loss_fn = HUGLoss("pure")
    for _ in range(3):
        features.grad = None
        terms = loss_fn.terms(features, labels, static)
        terms.loss.backward()
    assert len(calls) == 1  # the constant inter term is cached
    # The value is the exact (full-mode) energy; the feature gradient is the reference one.
    set_fused(False)
    exact = HUGLoss("pure", energy_mode="full")
    want = exact.terms(features, labels, proxies.detach().requires_grad_(True))
    torch.testing.assert_close(terms.inter, want.inter.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(terms.intra, want.intra.detach(), rtol=1e-12, atol=0)
    grad = features.grad.clone()
    features.grad = None
    exact(features, labels, proxies.detach().requires_grad_(True)).backward()
    torch.testing.assert_close(grad, features.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"intra": "squared_distance"},
        {"intra_reduction": "sample_mean"},
        {"reduction": "sum"},
    ],
)
def test_static_fused_node_equals_the_static_reference(
    overrides: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Static proxies run the fused intra-only node: same values and feature gradients."""
    features, labels, proxies = _inputs(num_classes=40)
    static = proxies.detach().clone()
    with torch.no_grad():
        features[1] = 0.0  # zero vectors on both sides
        static[labels[4]] = 0.0
    calls = []
    original = functional_hug.fused_proxy_hug

    def counting(*args: Any) -> Any:
        calls.append(args[-1].static)
        return original(*args)

    monkeypatch.setattr(functional_hug, "fused_proxy_hug", counting)
    results = []
    for on in (True, False):
        set_fused(on)
        features.grad = None
        terms = HUGLoss("pure", **overrides).terms(features, labels, static)
        terms.loss.backward()
        assert features.grad is not None
        results.append([terms.loss.detach(), terms.intra.detach(), features.grad.clone()])
    assert calls == [True]  # the fused node ran once (fused on), in static mode
    _assert_same(results[0], results[1])
    assert all(bool(torch.isfinite(t).all()) for t in results[0])


def test_static_fused_node_reads_only_the_batch_rows_of_other_dtypes() -> None:
    """float64 features, float32 static proxies: float32 compute (as the reference), same loss."""
    features, labels, proxies = _inputs(num_classes=40)
    static = proxies.detach().float()
    loss = HUGLoss("pure")(features, labels, static)
    set_fused(False)
    want = HUGLoss("pure")(features, labels, static)
    assert loss.dtype == want.dtype == torch.float32
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ("nan_features", "features contains non-finite"),
        ("label_high", r"labels out of range \[0, 6\): min 0, max 6"),
        ("label_low", r"labels out of range \[0, 6\): min -1"),
    ],
)
def test_static_fused_node_raises_the_reference_errors(change: str, match: str) -> None:
    features, labels, proxies = _inputs(num_classes=6)
    static = proxies.detach().clone()
    with torch.no_grad():
        if change == "nan_features":
            features[3, 1] = float("nan")
    labels = labels.clamp(0, 5)
    if change == "label_high":
        labels[0] = 6
    elif change == "label_low":
        labels[1] = -1
    for on in (True, False):
        set_fused(on)
        with pytest.raises(ValueError, match=match):
            HUGLoss("pure")(features, labels, static)


def test_static_cache_follows_in_place_updates_and_checks_values() -> None:
    features, labels, proxies = _inputs(num_classes=6)
    static = proxies.detach().clone()
    loss_fn = HUGLoss("pure")
    before = loss_fn.terms(features, labels, static).inter
    with torch.no_grad():
        static[0] = static[1]  # version bump: a duplicate proxy raises the energy
    after = loss_fn.terms(features, labels, static).inter
    assert float(after) > float(before)
    static[2, 0] = float("nan")
    with pytest.raises(ValueError, match="proxies contains non-finite"):
        loss_fn(features, labels, static)
    # A new tensor with the same values is a cache miss, not a stale hit.
    fresh = static.clone()
    fresh[2, 0] = 0.0
    assert torch.isfinite(loss_fn(features, labels, fresh))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ("nan_features", "features contains non-finite"),
        ("inf_proxies", "proxies contains non-finite"),
        ("label_high", r"labels out of range \[0, 6\): min 0, max 6"),
        ("label_low", r"labels out of range \[0, 6\): min -1"),
    ],
)
@pytest.mark.parametrize("on", [True, False])
def test_value_checks_raise_the_same_errors_on_both_paths(
    change: str, match: str, on: bool
) -> None:
    features, labels, proxies = _inputs(num_classes=6)
    with torch.no_grad():
        if change == "nan_features":
            features[3, 1] = float("nan")
        elif change == "inf_proxies":
            proxies[2, 0] = float("inf")
    if change == "label_high":
        labels = labels.clamp(0, 5)
        labels[0] = 6
    elif change == "label_low":
        labels = labels.clamp(0, 5)
        labels[1] = -1
    set_fused(on)
    assert fused.fused_supported(HUGLoss("pure").config, 12, 6) == on
    with pytest.raises(ValueError, match=match):
        HUGLoss("pure")(features, labels, proxies)


def test_deferred_checks_accept_huge_finite_values() -> None:
    features, labels, proxies = _inputs(num_classes=6)
    with torch.no_grad():
        features[0] = 1e300  # finite, but its norm overflows: confirmed element-wise, no error
    assert torch.isfinite(HUGLoss("pure")(features, labels, proxies))


@pytest.mark.parametrize("mode", ["full", "rows"])
def test_fused_handles_zero_vectors_in_both_energy_modes(mode: str) -> None:
    features, labels, proxies = _inputs(num_classes=6)
    with torch.no_grad():
        features[2] = 0.0
        proxies[0] = 0.0
        proxies[labels[3]] = 0.0
    config = HUGLoss("pure", energy_mode=mode, detach_proxies=False).config
    fast = _loss_and_grads(config, features, labels, proxies, on=True)
    assert all(bool(torch.isfinite(t).all()) for t in fast)
    _assert_same(fast, _loss_and_grads(config, features, labels, proxies, on=False))


@pytest.mark.parametrize("mode", ["full", "rows"])
def test_fused_backward_can_run_twice(mode: str) -> None:
    """The backward pass leaves its saved tensors intact (``retain_graph=True`` callers)."""
    features, labels, proxies = _inputs(num_classes=6)
    loss = HUGLoss("pure", energy_mode=mode)(features, labels, proxies)
    loss.backward(retain_graph=True)
    assert features.grad is not None and proxies.grad is not None
    first = (features.grad.clone(), proxies.grad.clone())
    loss.backward()
    torch.testing.assert_close(features.grad, 2 * first[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(proxies.grad, 2 * first[1], rtol=1e-12, atol=1e-14)


def test_fused_backward_of_one_term_only() -> None:
    """A loss built from one term gets that term's gradient (the other's is absent, not NaN)."""
    config = HUGLoss("pure", energy_mode="full").config
    features, labels, proxies = _inputs(num_classes=6)
    for term in ("inter", "intra"):
        grads = []
        for on in (True, False):
            set_fused(on)
            features.grad = None
            proxies.grad = None
            getattr(HUGLoss(config).terms(features, labels, proxies), term).backward()
            grads.append(
                [g.clone() if g is not None else None for g in (features.grad, proxies.grad)]
            )
        for got, want in zip(*grads, strict=True):
            if want is None or not bool(want.any()):
                assert got is None or not bool(got.any())
            else:
                assert got is not None
                torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
