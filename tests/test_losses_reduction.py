"""The poster's sum form and the hybrid cross-entropy term of the HUG losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from hug_plugins.losses import ClassMeanHUGLoss, HUGConfig, HUGLoss, preset_config

C, D, B = 5, 4, 12


def _data(seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(B, D, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 3, 1])  # class 4 absent
    proxies = torch.randn(C, D, generator=gen, dtype=torch.float64)
    return features, labels, proxies


def _naive_sum_form(features: Tensor, labels: Tensor, proxies: Tensor, config: HUGConfig) -> Tensor:
    """The poster's formulas transcribed with Python loops (float64)."""
    x = [f / f.norm() for f in features]
    w = [p / p.norm() for p in proxies]
    n = len(w)
    dist = [[(w[i] - w[j]).norm() for j in range(n)] for i in range(n)]
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    if config.inter == "mhe" and config.kernel == "riesz":
        inter = sum(dist[i][j] ** -config.s for i, j in pairs)
    elif config.inter == "mhe" and config.kernel == "log":
        inter = sum(torch.log(1 / dist[i][j]) for i, j in pairs)
    elif config.inter == "mhe":  # gaussian: log-sum-exp over ordered pairs
        inter = torch.log(sum(torch.exp(-config.t * dist[i][j] ** 2) for i, j in pairs))
    elif config.inter == "mhs":  # smooth minimum over unordered pairs, in distance units
        t = config.separation_t
        terms = [torch.exp(-dist[i][j] / t) for i, j in pairs if i < j]
        inter = t * torch.log(sum(terms))
    else:
        gram = torch.stack(
            [torch.stack([torch.exp(-config.mgd_gamma * d**2) for d in row]) for row in dist]
        )
        inter = -torch.logdet(gram + config.mgd_jitter * torch.eye(n, dtype=gram.dtype))
    per_sample = [(x[i] - w[int(labels[i])]).norm() for i in range(len(x))]
    if config.intra == "squared_distance":
        per_sample = [d**2 for d in per_sample]
    if config.intra == "max_distance":
        classes = sorted({int(y) for y in labels})
        intra = sum(
            max(per_sample[i] for i in range(len(x)) if int(labels[i]) == c) for c in classes
        )
    else:
        intra = sum(per_sample)
    return config.alpha * inter + config.beta * intra


CASES = [
    {"inter": "mhe", "kernel": "riesz", "s": 2.0},
    {"inter": "mhe", "kernel": "riesz", "s": 1.0, "intra": "squared_distance"},
    {"inter": "mhe", "kernel": "log"},
    {"inter": "mhe", "kernel": "gaussian", "t": 2.0},
    {"inter": "mhs", "intra": "max_distance"},
    {"inter": "mgd", "energy_mode": "full"},
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_sum_form_equals_the_naive_sum_reference(case: dict[str, object]) -> None:
    features, labels, proxies = _data()
    config = HUGConfig(alpha=0.15, beta=0.015, reduction="sum", energy_mode="full")
    config = HUGConfig(**{**config.__dict__, **case})  # type: ignore[arg-type]
    got = HUGLoss(config)(features, labels, proxies)
    torch.testing.assert_close(got, _naive_sum_form(features, labels, proxies, config))


@pytest.mark.parametrize("variant", ["mhe", "mhs", "mgd"])
def test_paper_presets_in_sum_form_carry_the_paper_weights(variant: str) -> None:
    config = preset_config(f"{variant}_sum")
    base = preset_config(variant)
    assert config.reduction == "sum" and base.reduction == "mean"
    assert (config.alpha, config.beta) == (base.alpha, base.beta)
    assert (config.alpha, config.beta) == ((0.15, 0.03) if variant == "mgd" else (0.15, 0.015))
    assert preset_config("authors").reduction == "mean"  # the authors' loss is unchanged


@pytest.mark.parametrize("energy_mode", ["full", "rows"])
@pytest.mark.parametrize("intra", ["distance", "squared_distance", "max_distance"])
def test_reductions_differ_by_the_documented_factors(energy_mode: str, intra: str) -> None:
    features, labels, proxies = _data(1)
    num_present = len(set(labels.tolist()))
    terms = {}
    for reduction, intra_reduction in (
        ("sum", "class_mean"),
        ("mean", "sample_mean"),
        ("mean", "class_mean"),
    ):
        loss = HUGLoss(
            reduction=reduction,
            intra_reduction=intra_reduction,
            intra=intra,
            energy_mode=energy_mode,
            alpha=1.0,
            beta=1.0,
        )
        loss(features, labels, proxies)
        assert loss.last_terms is not None
        terms[reduction, intra_reduction] = loss.last_terms
    total, sample_mean, class_mean = terms.values()
    torch.testing.assert_close(total.inter, C * (C - 1) * class_mean.inter)
    if intra == "max_distance":
        torch.testing.assert_close(total.intra, num_present * class_mean.intra)
    else:
        torch.testing.assert_close(total.intra, B * sample_mean.intra)


def test_class_mean_sum_form_counts_the_classes_present() -> None:
    features, labels, _ = _data(2)
    present = len(set(labels.tolist()))
    total = ClassMeanHUGLoss(C, reduction="sum", alpha=1.0, beta=1.0)
    mean = ClassMeanHUGLoss(C, reduction="mean", intra_reduction="sample_mean", alpha=1.0, beta=1.0)
    total(features, labels)
    mean(features, labels)
    assert total.last_terms is not None and mean.last_terms is not None
    torch.testing.assert_close(
        total.last_terms.inter, present * (present - 1) * mean.last_terms.inter
    )
    torch.testing.assert_close(total.last_terms.intra, B * mean.last_terms.intra)


@pytest.mark.parametrize("preset", ["mhe_sum", "mhe", "mgd"])
def test_hybrid_gradient_is_hug_plus_weighted_cross_entropy(preset: str) -> None:
    features, labels, proxies = _data(3)
    scale, weight = 10.0, 0.7

    def grads(loss_fn: HUGLoss, with_ce: bool) -> tuple[Tensor, Tensor, Tensor]:
        x = features.clone().requires_grad_(True)
        w = proxies.clone().requires_grad_(True)
        loss = loss_fn(x, labels, w)
        if with_ce:
            logits = scale * F.normalize(x, dim=1) @ F.normalize(w, dim=1).T
            loss = loss + weight * F.cross_entropy(logits, labels)
        loss.backward()
        assert x.grad is not None and w.grad is not None
        return loss.detach(), x.grad, w.grad

    hybrid = grads(HUGLoss.preset(preset, ce_weight=weight, logit_scale=scale), False)
    manual = grads(HUGLoss.preset(preset), True)
    for a, b in zip(hybrid, manual, strict=True):
        torch.testing.assert_close(a, b)
    loss_fn = HUGLoss.preset(preset, ce_weight=weight, logit_scale=scale)
    terms = loss_fn.terms(features, labels, proxies)
    assert terms.ce is not None
    torch.testing.assert_close(terms.loss, terms.inter + terms.intra + terms.ce)
    assert "ce_weight=0.7" in repr(loss_fn)
    assert HUGLoss("pure").terms(features, labels, proxies).ce is None  # pure HUG: no CE term
    assert HUGLoss().terms(features, labels, proxies).ce is not None  # the default has one


def test_hybrid_under_bf16_autocast_is_finite() -> None:
    features, labels, proxies = (t.float() if t.is_floating_point() else t for t in _data(4))
    x = features.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = HUGLoss.preset("mhe_sum", ce_weight=1.0)(x, labels, proxies)
    loss.backward()
    assert loss.dtype == torch.float32 and math.isfinite(float(loss.detach()))
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_bad_settings_raise() -> None:
    with pytest.raises(ValueError, match="reduction"):
        HUGLoss(reduction="total")
    with pytest.raises(ValueError, match="ce_weight"):
        HUGLoss(ce_weight=-1.0)
    with pytest.raises(ValueError, match="ce_weight"):
        HUGLoss(ce_weight=float("nan"))
    with pytest.raises(ValueError, match="logit_scale"):
        HUGLoss(logit_scale=0.0)
    with pytest.raises(ValueError, match="proxies"):
        ClassMeanHUGLoss(3, ce_weight=1.0)
    with pytest.raises(ValueError, match="unknown HUG preset"):
        HUGLoss.preset("mhe_total")
