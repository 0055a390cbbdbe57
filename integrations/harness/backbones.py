"""Backbones of the benchmark classifiers: ``(N, C, H, W)`` or flat inputs to ``(N, out_dim)``.

All adapted to small (CIFAR-sized) images the usual way:

* ``"resnet18"`` -- torchvision ResNet-18 with a 3x3 stride-1 stem and no stem max-pool.
* ``"vgg16"`` -- torchvision VGG-16 with batch norm; the max-pools use ``ceil_mode`` (so inputs
  smaller than 32x32 still work) and the 7x7 adaptive pool and 3-layer classifier are replaced
  by a global average pool.
* ``"densenet121"`` -- torchvision DenseNet-121 with a 3x3 stride-1 stem and no stem max-pool.
* ``"cnn"`` -- :class:`SmallCNN`, a few conv-BN-ReLU stages for CPU budgets.
* ``"mlp"`` -- :class:`MLP`, two hidden ReLU layers on the flattened input.

Example:
    >>> import torch
    >>> build_backbone("cnn", 3, width=4)(torch.rand(2, 3, 8, 8)).shape
    torch.Size([2, 16])
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ARCHITECTURES", "MLP", "SmallCNN", "build_backbone"]

ARCHITECTURES = ("cnn", "resnet18", "vgg16", "densenet121")
"""Image backbone names accepted by :func:`build_backbone` (which also takes ``"mlp"``)."""


class SmallCNN(nn.Module):
    """A small CNN for CPU budgets: per stage conv3x3-BN-ReLU (x ``convs_per_stage``), max-pool.

    Stage ``k`` has ``width * 2**k`` channels; the output is the global average of the last
    stage, of size :attr:`out_dim`. The max-pools use ``ceil_mode``, so tiny inputs (8x8) work.

    Args:
        in_channels: Image channels.
        width: Channels of the first stage (>= 1).
        stages: Number of stages (>= 1).
        convs_per_stage: Convolutions per stage (>= 1).

    Example:
        >>> import torch
        >>> net = SmallCNN(1, width=4, stages=2)
        >>> net(torch.randn(3, 1, 8, 8)).shape, net.out_dim
        (torch.Size([3, 8]), 8)
    """

    def __init__(
        self, in_channels: int, width: int = 32, stages: int = 3, convs_per_stage: int = 1
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("width", width),
            ("stages", stages),
            ("convs_per_stage", convs_per_stage),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        layers: list[nn.Module] = []
        channels = in_channels
        for stage in range(stages):
            out = width * 2**stage
            for _ in range(convs_per_stage):
                layers += [
                    nn.Conv2d(channels, out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(out),
                    nn.ReLU(inplace=True),
                ]
                channels = out
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.out_dim = channels

    def forward(self, x: Tensor) -> Tensor:
        """Returns ``(N, out_dim)`` pooled features."""
        out: Tensor = self.body(x)
        return out


class MLP(nn.Sequential):
    """``flatten -> in_features -> hidden -> hidden`` with ReLUs; :attr:`out_dim` = ``hidden``.

    Args:
        in_features: Size of the flattened input.
        hidden: Width of both hidden layers.

    Example:
        >>> import torch
        >>> MLP(64, 16)(torch.rand(3, 1, 8, 8)).shape
        torch.Size([3, 16])
    """

    def __init__(self, in_features: int, hidden: int = 128) -> None:
        for name, value in (("in_features", in_features), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        super().__init__(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )
        self.out_dim = hidden


class _TorchvisionBody(nn.Module):
    """Wraps a torchvision trunk (ending in a pooled, flattened vector) with its output size."""

    def __init__(self, body: nn.Module, out_dim: int) -> None:
        super().__init__()
        self.body = body
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.body(x)
        return out


def _resnet18(in_channels: int) -> _TorchvisionBody:
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return _TorchvisionBody(net, 512)


def _vgg16(in_channels: int) -> _TorchvisionBody:
    from torchvision.models import vgg16_bn

    net = vgg16_bn(weights=None)
    features = net.features
    first = features[0]
    assert isinstance(first, nn.Conv2d)
    features[0] = nn.Conv2d(in_channels, first.out_channels, 3, padding=1)
    for index, layer in enumerate(features):
        if isinstance(layer, nn.MaxPool2d):
            features[index] = nn.MaxPool2d(2, ceil_mode=True)
    body = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return _TorchvisionBody(body, 512)


def _densenet121(in_channels: int) -> _TorchvisionBody:
    from torchvision.models import densenet121

    net = densenet121(weights=None)
    net.features.conv0 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.features.pool0 = nn.Identity()
    net.classifier = nn.Identity()
    # DenseNet.forward: features -> ReLU -> global average pool -> flatten -> classifier.
    return _TorchvisionBody(net, 1024)


def build_backbone(
    arch: str,
    in_channels: int = 3,
    *,
    width: int = 32,
    convs_per_stage: int = 1,
    in_features: int | None = None,
) -> nn.Module:
    """Builds a CIFAR-adapted backbone mapping ``(N, C, H, W)`` floats to ``(N, out_dim)``.

    Args:
        arch: One of :data:`ARCHITECTURES`, or ``"mlp"``.
        in_channels: Image channels (1 for MNIST/digits, 3 for CIFAR).
        width: First-stage width of ``"cnn"``, hidden width of ``"mlp"`` (ignored by the
            torchvision models).
        convs_per_stage: Convolutions per stage of ``"cnn"``.
        in_features: Flattened input size (``"mlp"`` only, required there).

    Returns:
        The backbone; its ``out_dim`` attribute is the output size.

    Raises:
        ValueError: For an unknown architecture or a bad ``in_channels``.

    Example:
        >>> build_backbone("resnet18").out_dim
        512
    """
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be an integer >= 1, got {in_channels!r}")
    if arch == "cnn":
        return SmallCNN(in_channels, width=width, convs_per_stage=convs_per_stage)
    if arch == "mlp":
        if in_features is None:
            raise ValueError("arch 'mlp' needs in_features (the flattened input size)")
        return MLP(in_features, width)
    if arch == "resnet18":
        return _resnet18(in_channels)
    if arch == "vgg16":
        return _vgg16(in_channels)
    if arch == "densenet121":
        return _densenet121(in_channels)
    raise ValueError(f"unknown architecture {arch!r}; choose from {[*ARCHITECTURES, 'mlp']}")
