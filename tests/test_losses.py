"""Tests of the HUG losses: the authors' formula, robustness and input validation."""

from __future__ import annotations

import inspect
import itertools
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from hug_plugins.functional.uniformity import gram_log_det, riesz_energy, soft_separation
from hug_plugins.losses import ClassMeanHUGLoss, HUGConfig, HUGLoss, preset_config


def authors_reference(
    features: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor, alpha: float, beta: float
) -> torch.Tensor:
    """The authors' published MHE-HUG loss, written naively with a per-class loop."""
    w = F.normalize(proxies, dim=1)
    x = F.normalize(features, dim=1)
    pair_terms = [
        torch.linalg.vector_norm(w[i] - w[j]) ** -2
        for i, j in itertools.combinations(range(w.shape[0]), 2)
    ]
    inter = torch.stack(pair_terms).mean()
    per_class = []
    for c in labels.unique():
        members = x[labels == c]
        per_class.append(torch.linalg.vector_norm(members - w[c].detach(), dim=1).mean())
    intra = torch.stack(per_class).mean()
    return alpha * inter + beta * intra


@pytest.mark.parametrize("num_classes", [3, 7])
def test_authors_preset_equals_published_formula(num_classes: int) -> None:
    features = torch.randn(20, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, num_classes - 1, (20,))  # the last class is absent
    proxies = torch.randn(num_classes, 5, dtype=torch.float64, requires_grad=True)
    loss = HUGLoss.preset("authors")(features, labels, proxies)
    reference = authors_reference(features, labels, proxies, 0.15, 0.015)
    torch.testing.assert_close(loss, reference)
    got = torch.autograd.grad(loss, (features, proxies))
    want = torch.autograd.grad(reference, (features, proxies))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_proxies_get_no_intra_gradient_when_detached() -> None:
    features = torch.randn(6, 3)
    proxies = torch.randn(3, 3, requires_grad=True)
    loss_fn = HUGLoss("pure", alpha=0.0, beta=1.0, detach_proxies=True)
    (grad,) = torch.autograd.grad(
        loss_fn(features, torch.tensor([0, 1, 2, 0, 1, 2]), proxies), proxies
    )
    assert torch.count_nonzero(grad) == 0
    loss_fn = HUGLoss("pure", alpha=0.0, beta=1.0, detach_proxies=False)
    (grad,) = torch.autograd.grad(
        loss_fn(features, torch.tensor([0, 1, 2, 0, 1, 2]), proxies), proxies
    )
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["mhe", "mhs", "mgd", "authors"])
@pytest.mark.parametrize("mode", ["full", "rows"])
def test_gradcheck_every_preset(name: str, mode: str) -> None:
    if name == "mgd" and mode == "rows":
        pytest.skip("MGD needs the full Gram matrix")
    features = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    proxies = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 2, 2])
    loss_fn = HUGLoss.preset(name, energy_mode=mode, detach_proxies=False)
    assert torch.autograd.gradcheck(lambda f, p: loss_fn(f, labels, p), (features, proxies))


def test_variant_inter_terms_match_uniformity_measures() -> None:
    proxies = torch.randn(6, 4, dtype=torch.float64)
    features = torch.randn(12, 4, dtype=torch.float64)
    labels = torch.arange(12) % 6
    mhe = HUGLoss.preset("mhe", energy_mode="full").terms(features, labels, proxies)
    torch.testing.assert_close(mhe.inter, 0.15 * riesz_energy(proxies, s=2.0))
    mgd = HUGLoss.preset("mgd").terms(features, labels, proxies)
    torch.testing.assert_close(mgd.inter, -0.15 * gram_log_det(proxies))
    mhs = HUGLoss.preset("mhs", energy_mode="full").terms(features, labels, proxies)
    torch.testing.assert_close(mhs.inter, -0.15 * soft_separation(proxies, t=0.05))


def test_max_distance_intra_is_per_class_maximum() -> None:
    proxies = torch.eye(3, dtype=torch.float64)
    features = torch.tensor([[1.0, 0.1, 0], [1.0, 1.0, 0], [0, 1.0, 0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    loss_fn = HUGLoss(alpha=0.0, beta=1.0, intra="max_distance", intra_reduction="class_mean")
    terms = loss_fn.terms(features, labels, proxies)
    x = F.normalize(features, dim=1)
    expected = (torch.linalg.vector_norm(x[1] - proxies[0]) + 0.0) / 2
    torch.testing.assert_close(terms.intra, expected, atol=1e-3, rtol=0)


def test_rows_mode_is_unbiased_for_uniform_class_draws() -> None:
    proxies = torch.randn(6, 3, dtype=torch.float64)
    features = torch.randn(1, 3, dtype=torch.float64)
    full = HUGLoss(energy_mode="full").terms(features, torch.tensor([0]), proxies).inter
    rows = [
        HUGLoss(energy_mode="rows").terms(features, torch.tensor([c]), proxies).inter
        for c in range(6)
    ]
    torch.testing.assert_close(torch.stack(rows).mean(), full)


def test_terms_sum_to_loss_and_are_logged() -> None:
    loss_fn = HUGLoss.preset("mhe")
    loss = loss_fn(torch.randn(8, 4), torch.arange(8) % 4, torch.randn(4, 4))
    assert loss_fn.last_terms is not None
    torch.testing.assert_close(loss_fn.last_terms.inter + loss_fn.last_terms.intra, loss.detach())


@pytest.mark.parametrize("name", ["mhe", "mhs", "mgd"])
def test_no_nan_on_degenerate_inputs(name: str) -> None:
    loss_fn = HUGLoss.preset(name, detach_proxies=False)
    cm_loss = ClassMeanHUGLoss(4, config=preset_config(name))
    cases = {
        "zero features": (torch.zeros(6, 3), torch.tensor([0, 1, 2, 3, 0, 1]), torch.randn(4, 3)),
        "duplicate proxies": (
            torch.randn(6, 3),
            torch.tensor([0, 1, 2, 3, 0, 1]),
            torch.ones(4, 3),
        ),
        "one-sample class": (torch.randn(5, 3), torch.tensor([0, 0, 1, 1, 2]), torch.randn(4, 3)),
        "one-class batch": (torch.randn(5, 3), torch.zeros(5, dtype=torch.long), torch.randn(4, 3)),
        "single sample": (torch.randn(1, 3), torch.tensor([2]), torch.randn(4, 3)),
    }
    for case, (features, labels, proxies) in cases.items():
        features = features.clone().requires_grad_(True)
        proxies = proxies.clone().requires_grad_(True)
        loss = loss_fn(features, labels, proxies)
        grads = torch.autograd.grad(loss, (features, proxies))
        assert torch.isfinite(loss), case
        assert all(torch.isfinite(g).all() for g in grads), case
        cm = cm_loss(features, labels)
        if cm.requires_grad:
            (g,) = torch.autograd.grad(cm, features)
            assert torch.isfinite(g).all(), case
        assert torch.isfinite(cm), case


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["mhe", "mhs", "mgd"])
def test_autocast_half_precision(dtype: torch.dtype, name: str) -> None:
    linear = torch.nn.Linear(8, 4)
    proxies = torch.nn.Parameter(torch.randn(5, 4))
    with torch.no_grad():
        proxies[1] = proxies[0] + 1e-4  # near-duplicate: 1/d^2 overflows fp16
    x = torch.randn(10, 8)
    labels = torch.arange(10) % 5
    with torch.autocast("cpu", dtype=dtype):
        features = linear(x)
        loss = HUGLoss.preset(name, detach_proxies=False)(features, labels, proxies)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(proxies.grad).all()  # type: ignore[arg-type]
    assert torch.isfinite(linear.weight.grad).all()  # type: ignore[arg-type]


def test_class_mean_form_skips_absent_classes() -> None:
    features = torch.randn(9, 4, dtype=torch.float64)
    labels = torch.tensor([0, 0, 2, 2, 2, 5, 5, 5, 5])
    big = ClassMeanHUGLoss(8, energy_mode="full").terms(features, labels)
    x = F.normalize(features, dim=1)
    means = torch.stack([x[labels == c].mean(0) for c in (0, 2, 5)])
    torch.testing.assert_close(big.inter, HUGConfig().alpha * riesz_energy(means, s=2.0))
    rows = ClassMeanHUGLoss(8, energy_mode="rows").terms(features, labels)
    torch.testing.assert_close(rows.inter, big.inter)
    relabelled = ClassMeanHUGLoss(3, energy_mode="full").terms(
        features, torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2])
    )
    torch.testing.assert_close(relabelled.loss, big.loss)


def test_class_mean_gradcheck() -> None:
    features = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 3, 3, 3, 1])
    for name in ("mhe", "mhs", "mgd"):
        loss_fn = ClassMeanHUGLoss(5, config=preset_config(name), detach_proxies=False)
        assert torch.autograd.gradcheck(lambda f, fn=loss_fn: fn(f, labels), (features,))


@pytest.mark.parametrize(
    ("features", "labels", "proxies", "match"),
    [
        (torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), torch.randn(3, 5), "5 columns"),
        (torch.randn(4), torch.tensor([0, 1, 2, 0]), torch.randn(3, 4), "shape"),
        (torch.randn(4, 3), torch.tensor([0.0, 1.0, 2.0, 0.0]), torch.randn(3, 3), "integer"),
        (torch.randn(4, 3), torch.tensor([0, 1, 3, 0]), torch.randn(3, 3), "out of range"),
        (torch.randn(4, 3), torch.tensor([0, -1, 2, 0]), torch.randn(3, 3), "out of range"),
        (torch.randn(4, 3), torch.tensor([0, 1, 2]), torch.randn(3, 3), "entries"),
        (
            torch.full((4, 3), float("nan")),
            torch.tensor([0, 1, 2, 0]),
            torch.randn(3, 3),
            "non-finite",
        ),
        (
            torch.randn(4, 3),
            torch.tensor([0, 1, 2, 0]),
            torch.full((3, 3), float("inf")),
            "non-finite",
        ),
        (torch.randn(4, 3), torch.tensor([0, 0, 0, 0]), torch.randn(1, 3), "at least 2"),
    ],
)
def test_bad_input_raises_value_error(
    features: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        HUGLoss()(features, labels, proxies)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": -1.0}, "alpha"),
        ({"beta": float("nan")}, "beta"),
        ({"inter": "mmd"}, "inter"),
        ({"intra": "cos"}, "intra"),
        ({"energy_mode": "sparse"}, "energy_mode"),
        ({"inter": "mgd", "energy_mode": "rows"}, "mgd"),
        ({"kernel": "gaussian", "t": -1.0}, "temperature"),
        ({"gamma": 1.0}, "unknown HUG argument"),
    ],
)
def test_bad_hyperparameters_raise(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HUGLoss(**kwargs)


def test_presets_carry_paper_weights() -> None:
    assert (preset_config("mhe").alpha, preset_config("mhe").beta) == (0.15, 0.015)
    assert (preset_config("mhs").alpha, preset_config("mhs").beta) == (0.15, 0.015)
    assert (preset_config("mgd").alpha, preset_config("mgd").beta) == (0.15, 0.03)
    with pytest.raises(ValueError, match="unknown HUG preset"):
        preset_config("ce")
    assert isinstance(preset_config("mhe", s=1.0), HUGConfig)


def test_paper_presets_keep_the_authors_distance_pull() -> None:
    for name in ("mhe", "mgd", "authors", "mhe_sum", "mgd_sum", "ssl", "distance_pull"):
        assert preset_config(name).intra == "distance", name
    assert preset_config("mhs").intra == "max_distance"
    assert HUGConfig().intra == preset_config("default").intra == "squared_distance"
    assert preset_config("distance_pull") == HUGConfig(intra="distance")


def test_hugloss_default_is_pure_hug_plus_the_ce_term_and_the_other_adapters_stay_pure() -> None:
    """``HUGLoss()`` is preset ``"default"``: decoupled HUG (``"pure"``, ``HUGConfig()``) plus
    cross-entropy on the scaled-cosine logits; the adapters without logits (class means) or
    with an O(B d) static-proxy step (``HUGPlugin``) default to ``"pure"``."""
    assert preset_config("pure") == HUGConfig()
    assert preset_config("default") == replace(HUGConfig(), ce_weight=1.0)
    assert HUGLoss().config == preset_config("default")
    assert HUGLoss(beta=16.0).config == replace(preset_config("default"), beta=16.0)
    assert HUGLoss("pure").config.ce_weight == 0.0
    assert HUGLoss(HUGConfig()).config == HUGConfig()  # an explicit config is taken as is
    assert ClassMeanHUGLoss(3).config == HUGConfig()
    assert inspect.signature(HUGLoss).parameters["ce_weight"].default == 1.0
    assert inspect.signature(ClassMeanHUGLoss).parameters["ce_weight"].default == 0.0
    with pytest.raises(ValueError, match="ce_weight > 0 needs class proxies"):
        ClassMeanHUGLoss(3, config="default")


def test_default_pull_grows_with_the_distance_and_fades_at_the_proxy() -> None:
    """The default (squared) pull's gradient on a sample is 2 sin(theta) along the sphere: small
    next to its proxy, large far from it. The distance pull's is cos(theta / 2): largest next to
    the proxy, so it gives misclassified samples no more push than fitted ones (docs: "Does HUG
    fit its training set?")."""
    proxies = torch.eye(2, 3)

    def pull_gradient(config: HUGConfig, angle: float) -> float:
        feature = torch.tensor([[math.cos(angle), math.sin(angle), 0.0]], requires_grad=True)
        HUGLoss(config).terms(feature, torch.tensor([0]), proxies).intra.backward()
        assert feature.grad is not None
        return float(feature.grad.norm()) / config.beta  # the logged term carries beta

    near, far = 0.1, 2.0
    squared, distance = HUGConfig(), HUGConfig(intra="distance")
    assert pull_gradient(squared, near) == pytest.approx(2 * math.sin(near), rel=1e-4)
    assert pull_gradient(squared, far) == pytest.approx(2 * math.sin(far), rel=1e-4)
    assert pull_gradient(distance, near) == pytest.approx(math.cos(near / 2), rel=1e-4)
    assert pull_gradient(squared, far) > 5 * pull_gradient(squared, near)
    assert pull_gradient(distance, far) < pull_gradient(distance, near)
