"""The SimCLR-style model and the criteria the benchmark compares."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from harness.models import build_backbone
from hug_plugins.ssl import HUGCriterion

CRITERIA = ("hug", "ntxent", "hypersphere")
"""Criterion names accepted by :func:`build_criterion`."""

CRITERION_NAMES = {"hug": "HUGCriterion", "ntxent": "NTXentLoss", "hypersphere": "HypersphereLoss"}
"""Criterion name -> class name (the table's row label)."""


def digits_cnn(width: int) -> nn.Module:
    """A small CNN for 8x8 grayscale images; output dimension ``4 * width``."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 4 * width, 3, padding=1, bias=False),
        nn.BatchNorm2d(4 * width),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


class SimCLR(nn.Module):
    """Backbone + lightly ``SimCLRProjectionHead``; ``forward`` returns the projection."""

    def __init__(self, backbone: nn.Module, feature_dim: int, hidden: int, out: int) -> None:
        super().__init__()
        from lightly.models.modules import SimCLRProjectionHead

        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(feature_dim, hidden, out)

    def forward(self, x: Tensor) -> Tensor:
        features = self.backbone(x).flatten(start_dim=1)
        out: Tensor = self.projection_head(features)
        return out


SSL_BACKBONES = ("digits_cnn", "cnn", "resnet18_cifar")
"""Backbones of :func:`build_ssl_model`."""


def build_ssl_model(backbone: str, *, width: int, proj_hidden: int, proj_dim: int) -> SimCLR:
    """The SimCLR model; call after seeding.

    Backbones: ``"digits_cnn"`` (:func:`digits_cnn`, 8x8 grayscale), ``"cnn"`` (the
    classification job's :class:`~harness.backbones.SmallCNN` for RGB images, width
    ``width``, a CPU budget) or ``"resnet18_cifar"`` (the CIFAR ResNet-18 of
    :func:`~harness.backbones.build_backbone`).
    """
    if backbone == "digits_cnn":
        return SimCLR(digits_cnn(width), 4 * width, proj_hidden, proj_dim)
    if backbone == "cnn":
        net = build_backbone("cnn", 3, width=width)
        return SimCLR(net, int(getattr(net, "out_dim")), proj_hidden, proj_dim)  # noqa: B009
    if backbone == "resnet18_cifar":
        return SimCLR(build_backbone("resnet18", 3), 512, proj_hidden, proj_dim)
    raise ValueError(f"model.backbone must be one of {list(SSL_BACKBONES)}, got {backbone!r}")


# ----------------------------------------------------------------------------- criteria


def build_criterion(name: str, options: Mapping[str, Any], gather: bool = False) -> nn.Module:
    """The criterion ``name`` (:data:`CRITERIA`) with keyword ``options``.

    Args:
        name: ``"hug"`` (:class:`~hug_plugins.ssl.HUGCriterion`), ``"ntxent"`` or
            ``"hypersphere"`` (lightly's ``NTXentLoss`` / ``HypersphereLoss``).
        options: Constructor arguments (a list ``memory_bank_size`` becomes a tuple).
        gather: Gather all ranks under DDP (HUGCriterion, NTXentLoss; HypersphereLoss has no
            gather).

    Returns:
        The criterion.
    """
    kwargs = dict(options)
    if name == "hug":
        if isinstance(kwargs.get("memory_bank_size"), list):
            kwargs["memory_bank_size"] = tuple(kwargs["memory_bank_size"])
        return HUGCriterion(**kwargs, gather_distributed=gather)
    if name == "ntxent":
        from lightly.loss import NTXentLoss

        ntxent: nn.Module = NTXentLoss(**kwargs, gather_distributed=gather)
        return ntxent
    if name == "hypersphere":
        from lightly.loss.hypersphere_loss import HypersphereLoss

        hypersphere: nn.Module = HypersphereLoss(**kwargs)
        return hypersphere
    raise ValueError(f"unknown criterion {name!r}; available: {list(CRITERIA)}")


class TwoViewLoss(nn.Module):
    """``loss_fn(model, batch)`` for the trainer: ``criterion(model(x0), model(x1))``.

    Under mixed precision the model runs in half precision but every criterion gets float32
    projections with autocast disabled (HUGCriterion does this itself; lightly's
    ``HypersphereLoss`` has no bfloat16 ``pdist`` on the CPU), so all three are compared in
    the same precision.
    """

    def __init__(self, criterion: nn.Module) -> None:
        super().__init__()
        self.criterion = criterion

    def forward(self, model: nn.Module, batch: Any) -> Tensor:
        views, _ = batch
        z0, z1 = model(views[0]), model(views[1])
        with torch.autocast(z0.device.type, enabled=False):
            out: Tensor = self.criterion(z0.float(), z1.float())
        return out
