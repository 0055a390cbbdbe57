"""Tests of harness.models: CIFAR-adapted backbones, (features, logits), swappable heads."""

from __future__ import annotations

import pytest
import torch
from harness.models import (
    ARCHITECTURES,
    FeatureClassifier,
    InputNormalize,
    SmallCNN,
    build_backbone,
    build_classifier,
    classifier_weight,
    make_head,
)
from harness.train import seed_everything
from torch import nn

from hug_plugins.proxies import ProxyHead


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_arch_returns_features_and_logits_on_small_images(arch: str) -> None:
    model = build_classifier(arch, num_classes=7, in_channels=1, feature_dim=12).eval()
    images = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    features, logits = model(images)
    assert features.shape == (2, 12) and logits.shape == (2, 7)
    assert torch.isfinite(features).all() and torch.isfinite(logits).all()


@pytest.mark.parametrize(
    ("arch", "dim"), [("resnet18", 512), ("vgg16", 512), ("densenet121", 1024)]
)
def test_torchvision_backbones_are_cifar_adapted(arch: str, dim: int) -> None:
    backbone = build_backbone(arch, 3)
    assert backbone.out_dim == dim
    stems = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    assert stems[0].kernel_size == (3, 3) and stems[0].stride == (1, 1)
    assert not any(
        isinstance(m, nn.MaxPool2d) and m.kernel_size == 3 for m in backbone.modules()
    ), "the ImageNet stem max-pool must be removed"
    out = backbone.eval()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, dim)


def test_resnet18_keeps_32x32_resolution_in_the_first_stage() -> None:
    backbone = build_backbone("resnet18", 3).eval()
    seen: list[tuple[int, ...]] = []
    layer1 = backbone.body.layer1  # type: ignore[union-attr]
    layer1.register_forward_hook(lambda _m, _i, o: seen.append(tuple(o.shape)))
    backbone(torch.randn(1, 3, 32, 32))
    assert seen == [(1, 64, 32, 32)]


def test_heads_swap_and_classifier_weight() -> None:
    ce = build_classifier("cnn", 5, 3, feature_dim=8, width=4)
    assert isinstance(ce.head, nn.Linear) and classifier_weight(ce).shape == (5, 8)
    for mode in ("learnable", "static_random", "static_optimized", "partial"):
        hug = build_classifier("cnn", 5, 3, feature_dim=8, head="proxy", proxy_mode=mode, width=4)
        assert isinstance(hug.head, ProxyHead) and hug.head.mode == mode
        assert classifier_weight(hug).shape == (5, 8)
    ce.head = make_head("proxy", 5, 8)
    assert ce(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))[1].shape == (1, 5)
    ce.head = nn.Identity()
    with pytest.raises(ValueError, match=r"nn\.Linear or ProxyHead"):
        classifier_weight(ce)


def test_same_seed_gives_the_same_backbone_for_ce_and_hug() -> None:
    seed_everything(3)
    ce = build_classifier("cnn", 4, 3, feature_dim=8, width=4)
    seed_everything(3)
    hug = build_classifier("cnn", 4, 3, feature_dim=8, head="proxy", width=4)
    for (name, a), (_, b) in zip(
        ce.backbone.state_dict().items(), hug.backbone.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert torch.equal(ce.neck.weight, hug.neck.weight)


def test_feature_dim_none_uses_backbone_output() -> None:
    model = build_classifier("cnn", 3, 1, feature_dim=None, width=4)
    assert isinstance(model.neck, nn.Identity) and model.feature_dim == SmallCNN(1, 4).out_dim
    assert model(torch.zeros(2, 1, 8, 8))[0].shape == (2, 16)


def test_channels_last_gives_the_same_outputs() -> None:
    seed_everything(0)
    plain = build_classifier("cnn", 3, 3, feature_dim=8, width=4).eval()
    seed_everything(0)
    fast = build_classifier("cnn", 3, 3, feature_dim=8, width=4, channels_last=True).eval()
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    torch.testing.assert_close(plain(x)[1], fast(x)[1], rtol=1e-4, atol=1e-5)


def test_input_normalize_treats_uint8_and_unit_floats_alike() -> None:
    norm = InputNormalize([0.1, 0.2, 0.3], [0.5, 0.5, 0.5])
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    torch.testing.assert_close(norm(x), norm(x.float() / 255.0))
    with pytest.raises(ValueError, match="expected images"):
        norm(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="std must be positive"):
        InputNormalize([0.0], [0.0])


def test_input_normalize_flat_inputs() -> None:
    one = InputNormalize([0.5], [0.25])
    assert one(torch.ones(2, 5)).tolist() == [[2.0] * 5] * 2  # one statistic for all features
    per = InputNormalize([0.0, 0.5, 1.0], [1.0, 0.5, 0.25])
    assert per(torch.ones(1, 3)).tolist() == [[1.0, 1.0, 0.0]]  # one per feature
    with pytest.raises(ValueError, match="flat inputs"):
        per(torch.ones(1, 4))
    with pytest.raises(ValueError, match="expected images"):
        one(torch.ones(2, 1, 3))


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        build_backbone("alexnet")
    with pytest.raises(ValueError, match="in_channels"):
        build_backbone("cnn", 0)
    with pytest.raises(ValueError, match="head must be"):
        make_head("cosine", 3, 4)
    with pytest.raises(ValueError, match="width"):
        SmallCNN(3, width=0)
    with pytest.raises(ValueError, match="backbone_dim"):
        FeatureClassifier(nn.Flatten(), nn.Linear(4, 2))


def test_training_step_updates_proxies_and_backbone() -> None:
    model = build_classifier("cnn", 3, 1, feature_dim=6, head="proxy", width=4)
    before = [p.detach().clone() for p in model.parameters()]
    _, logits = model(torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8))
    nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0, 1, 2])).backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    changed = [not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)]
    assert all(changed)
