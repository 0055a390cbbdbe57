"""The functional layer equals the loss modules, in float64, on every path."""

from __future__ import annotations

import pytest
import torch

import hug_plugins.functional as HF
from hug_plugins import ClassMeanHUGLoss, HUGLoss
from hug_plugins.functional.fused import set_fused
from hug_plugins.losses import preset_config

PRESETS = ["default", "mhe", "mhs", "mgd", "authors", "mhe_sum", "mhs_sum"]


def _batch(num_classes: int = 5, batch: int = 12) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(batch, 8, dtype=torch.float64, generator=gen)
    labels = torch.arange(batch) % num_classes
    proxies = torch.randn(num_classes, 8, dtype=torch.float64, generator=gen)
    return features, labels, proxies


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
@pytest.mark.parametrize("static", [False, True], ids=["learnable", "static"])
@pytest.mark.parametrize("name", PRESETS)
def test_hug_loss_equals_the_module_values_and_gradients(
    name: str, static: bool, fused: bool
) -> None:
    features, labels, proxies = _batch()
    config = preset_config(name)
    results = []
    set_fused(fused)
    try:
        for compute in (
            lambda f, p: HF.hug_loss(f, labels, p, config),
            lambda f, p: HUGLoss(config).terms(f, labels, p),
        ):
            f = features.clone().requires_grad_(True)
            p = proxies.clone().requires_grad_(not static)
            terms = compute(f, p)
            terms.loss.backward()
            grads = [f.grad] if static else [f.grad, p.grad]
            results.append(([terms.loss, terms.inter, terms.intra], grads))
    finally:
        set_fused(True)
    (values_f, grads_f), (values_m, grads_m) = results
    for a, b in zip(values_f + grads_f, values_m + grads_m, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["full", "rows"])
def test_hug_loss_energy_modes_match_the_module(mode: str) -> None:
    features, labels, proxies = _batch(num_classes=20, batch=6)
    config = preset_config("pure", energy_mode=mode)
    a = HF.hug_loss(features, labels, proxies.requires_grad_(True), config)
    b = HUGLoss(config).terms(features, labels, proxies)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.inter, b.inter)


def test_static_inter_is_the_constant_the_module_caches() -> None:
    features, labels, proxies = _batch()
    module = HUGLoss("pure")
    cached = module.terms(features, labels, proxies).inter
    assert torch.equal(cached, HUGLoss("pure").config.alpha * HF.static_proxy_inter(proxies))
    calls: list[torch.dtype] = []

    def constant(p: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        calls.append(dtype)
        return torch.zeros((), dtype=dtype)

    pure = HF.preset_config("pure")  # the default's CE term needs every proxy: no static path
    terms = HF.hug_loss(features, labels, proxies, pure, static_inter=constant)
    assert calls == [torch.float64] and float(terms.inter) == 0.0


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("name", ["pure", "mhs", "mgd", "mhe_sum"])
def test_class_mean_hug_loss_equals_the_module(name: str, center: bool) -> None:
    features, labels, _ = _batch()
    labels = labels.clone()
    labels[labels == 4] = 0  # an absent class
    config = preset_config(name)
    a = HF.class_mean_hug_loss(features, labels, 5, config, center=center)
    b = ClassMeanHUGLoss(5, center=center, config=config).terms(features, labels)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.inter, b.inter)


def test_class_mean_form_rejects_a_ce_term() -> None:
    features, labels, _ = _batch()
    with pytest.raises(ValueError, match="ce_weight"):
        HF.class_mean_hug_loss(features, labels, 5, preset_config("default", ce_weight=1.0))


def test_hug_loss_checks_its_input() -> None:
    features, labels, proxies = _batch()
    with pytest.raises(ValueError, match="at least 2 proxies"):
        HF.hug_loss(features, labels * 0, proxies[:1])
    with pytest.raises(ValueError):
        HF.hug_loss(features, labels + 10, proxies)
    with pytest.raises(ValueError, match="alpha"):
        HF.hug_loss(features, labels, proxies, HF.HUGConfig(alpha=-1.0))


def test_squared_distances_match_cdist() -> None:
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(HF.squared_distances(x, y), torch.cdist(x, y) ** 2)
    u = torch.nn.functional.normalize(x, dim=1)
    torch.testing.assert_close(HF.squared_distances(u, u, unit=True), torch.cdist(u, u) ** 2)


def test_masked_gram_log_det_equals_that_of_the_present_points() -> None:
    points = torch.nn.functional.normalize(torch.randn(6, 4, dtype=torch.float64), dim=1)
    present = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    masked = HF.gaussian_gram_log_det(HF.squared_distances(points, points), 1.0, 1e-4, present)
    subset = HF.gram_log_det(points[present.bool()], gamma=1.0, jitter=1e-4, normalize=False)
    torch.testing.assert_close(masked, subset)
