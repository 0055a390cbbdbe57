"""Image classifiers for the CE vs. HUG benchmarks: ``model(x) -> (features, logits)``.

Every model is a :class:`FeatureClassifier`: an input normalization (uint8 or float images in,
per-channel standardized floats out), a backbone that maps an image batch to a vector per image,
an optional linear *neck* to ``feature_dim`` (the features the losses and the neural-collapse
metrics see) and a swappable *head*: ``nn.Linear`` for cross-entropy or a
:class:`~hug_plugins.proxies.ProxyHead` for HUG (:func:`make_head`). The backbone and neck are
identical for both, so a comparison changes only the head and the objective.

Backbones (:func:`build_backbone`), all adapted to small (CIFAR-sized) images the usual way:

* ``"resnet18"`` -- torchvision ResNet-18 with a 3x3 stride-1 stem and no stem max-pool.
* ``"vgg16"`` -- torchvision VGG-16 with batch norm; the max-pools use ``ceil_mode`` (so inputs
  smaller than 32x32 still work) and the 7x7 adaptive pool and 3-layer classifier are replaced
  by a global average pool.
* ``"densenet121"`` -- torchvision DenseNet-121 with a 3x3 stride-1 stem and no stem max-pool.
* ``"cnn"`` -- :class:`SmallCNN`, a few conv-BN-ReLU stages for CPU budgets.
* ``"mlp"`` -- :class:`MLP`, two hidden ReLU layers on the flattened input (give
  ``in_features``; for digits and other tiny inputs).

A neck is used by default because the pooled outputs of these backbones come right after a
ReLU: they are non-negative, so they cannot reach proxies spread over the whole sphere, which
would handicap HUG. ``feature_dim=None`` drops the neck (the raw pooled features are used).

Example:
    >>> import torch
    >>> model = build_classifier("cnn", num_classes=10, in_channels=3, feature_dim=16, width=8)
    >>> images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    >>> features, logits = model(images)
    >>> tuple(features.shape), tuple(logits.shape)
    ((2, 16), (2, 10))
    >>> hug = build_classifier("cnn", 10, 3, feature_dim=16, head="proxy", width=8)
    >>> type(hug.head).__name__, tuple(classifier_weight(hug).shape)
    ('ProxyHead', (10, 16))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from harness.backbones import ARCHITECTURES, MLP, SmallCNN, build_backbone
from hug_plugins.proxies import ProxyHead

__all__ = [
    "ARCHITECTURES",
    "MLP",
    "FeatureClassifier",
    "InputNormalize",
    "SmallCNN",
    "assemble_classifier",
    "build_backbone",
    "build_classifier",
    "classifier_weight",
    "make_head",
]


_HEADS = ("linear", "proxy")


class InputNormalize(nn.Module):
    """Turns images into standardized floats: ``(x / 255 if uint8 else x - mean) / std``.

    uint8 input is scaled to ``[0, 1]`` first; floating-point input is taken as already in
    ``[0, 1]``. The statistics are buffers (saved with the model, moved with it). Images
    ``(N, C, H, W)`` take one statistic per channel; flattened inputs ``(N, D)`` take one
    statistic for all ``D`` features, or ``D`` of them.

    Args:
        mean: Per-channel means (in ``[0, 1]`` units).
        std: Per-channel standard deviations (> 0).

    Raises:
        ValueError: If the lengths differ, are zero, or a std is not positive.

    Example:
        >>> norm = InputNormalize([0.5], [0.5])
        >>> norm(torch.tensor([[[[0, 255]]]], dtype=torch.uint8)).flatten().tolist()
        [-1.0, 1.0]
        >>> norm(torch.tensor([[0.0, 0.25, 1.0]])).tolist()
        [[-1.0, -0.5, 1.0]]
    """

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32)
        std_t = torch.as_tensor(list(std), dtype=torch.float32)
        if mean_t.ndim != 1 or mean_t.numel() == 0 or mean_t.shape != std_t.shape:
            raise ValueError(f"mean and std must be equal-length lists, got {mean} and {std}")
        if not bool((std_t > 0).all()):
            raise ValueError(f"std must be positive, got {std}")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Returns the standardized float32 batch ``(N, C, H, W)`` or ``(N, D)``."""
        channels = self.mean.shape[1]
        mean, std = self.mean, self.std
        if x.ndim == 2 and channels in (1, x.shape[1]):
            mean, std = mean.view(1, -1), std.view(1, -1)
        elif x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(
                f"expected images (N, {channels}, H, W), or flat inputs (N, D) when there is "
                f"one statistic or D = {channels}; got {tuple(x.shape)}"
            )
        y = x.float()
        if x.dtype == torch.uint8:
            y = y / 255.0
        return (y - mean) / std


def make_head(
    kind: str,
    num_classes: int,
    dim: int,
    *,
    proxy_mode: str = "learnable",
    scale: float = 16.0,
    seed: int = 0,
) -> nn.Module:
    """Builds a classification head: ``"linear"`` (``nn.Linear``) or ``"proxy"`` (ProxyHead).

    Args:
        kind: ``"linear"`` (cross-entropy) or ``"proxy"`` (HUG).
        num_classes: Number of classes.
        dim: Feature dimension.
        proxy_mode: :class:`~hug_plugins.proxies.ProxyHead` mode (``"learnable"``,
            ``"static_random"``, ``"static_optimized"``, ``"partial"``).
        scale: ProxyHead logit scale.
        seed: Seed of the proxy initialization.

    Returns:
        The head, mapping ``(N, dim)`` features to ``(N, num_classes)`` logits.

    Raises:
        ValueError: For an unknown kind (other arguments are checked by the heads).

    Example:
        >>> make_head("linear", 3, 4)
        Linear(in_features=4, out_features=3, bias=True)
    """
    if kind == "linear":
        return nn.Linear(dim, num_classes)
    if kind == "proxy":
        return ProxyHead(num_classes, dim, mode=proxy_mode, scale=scale, seed=seed)  # type: ignore[arg-type]
    raise ValueError(f"head must be one of {list(_HEADS)}, got {kind!r}")


class FeatureClassifier(nn.Module):
    """``normalize -> backbone -> neck -> head``; ``forward`` returns ``(features, logits)``.

    Args:
        backbone: Maps normalized images to ``(N, backbone_dim)``; needs an ``out_dim``
            attribute unless ``backbone_dim`` is given.
        head: Maps ``(N, feature_dim)`` features to logits (replaceable: assign ``.head``).
        normalize: Input normalization (e.g. :class:`InputNormalize`); ``None``: identity.
        feature_dim: Size of the linear neck; ``None``: no neck.
        backbone_dim: Output size of the backbone (default: ``backbone.out_dim``).
        channels_last: Feed the backbone channels-last tensors (faster convolutions on CPUs
            and tensor-core GPUs; convert the model with ``.to(memory_format=...)`` too).

    Attributes:
        feature_dim: The size of the returned features.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        *,
        normalize: nn.Module | None = None,
        feature_dim: int | None = None,
        backbone_dim: int | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.channels_last = bool(channels_last)
        if backbone_dim is None:
            backbone_dim = int(getattr(backbone, "out_dim", 0))
        if backbone_dim < 1:
            raise ValueError("backbone_dim must be given when the backbone has no out_dim")
        if feature_dim is not None and (isinstance(feature_dim, bool) or feature_dim < 1):
            raise ValueError(f"feature_dim must be >= 1 or None, got {feature_dim!r}")
        self.normalize = normalize if normalize is not None else nn.Identity()
        self.backbone = backbone
        self.neck: nn.Module = (
            nn.Linear(backbone_dim, feature_dim) if feature_dim is not None else nn.Identity()
        )
        self.feature_dim = feature_dim if feature_dim is not None else backbone_dim
        self.head = head

    def backbone_features(self, x: Tensor) -> Tensor:
        """Returns the backbone's output (the neck's input) for a batch of images."""
        x = self.normalize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out: Tensor = self.backbone(x)
        return out

    def features(self, x: Tensor) -> Tensor:
        """Returns the ``(N, feature_dim)`` features of a batch of images."""
        out: Tensor = self.neck(self.backbone_features(x))
        return out

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(features, logits)``."""
        features = self.features(x)
        logits: Tensor = self.head(features)
        return features, logits


def classifier_weight(model: nn.Module) -> Tensor:
    """The ``(C, d)`` classifier rows (linear head) or proxies (ProxyHead) of a model's head.

    Args:
        model: A model with a ``head`` attribute (e.g. :class:`FeatureClassifier`).

    Returns:
        The weight (a live view; detach before storing).

    Raises:
        ValueError: If the head is neither ``nn.Linear`` nor a ProxyHead.
    """
    head = getattr(model, "head", None)
    if isinstance(head, ProxyHead):
        return head.proxies
    if isinstance(head, nn.Linear):
        return head.weight
    raise ValueError(f"model.head must be nn.Linear or ProxyHead, got {type(head).__name__}")


def assemble_classifier(
    backbone: nn.Module,
    backbone_dim: int,
    num_classes: int,
    *,
    head: str,
    normalize: nn.Module | None = None,
    feature_dim: int | None = None,
    proxy_mode: str = "learnable",
    scale: float = 16.0,
    seed: int = 0,
    channels_last: bool = False,
) -> FeatureClassifier:
    """``normalize -> backbone -> neck -> head`` with the head made last.

    The neck is created before the head, so the backbone and neck draw the same random numbers
    whatever the head: CE and HUG models built after the same seed start from identical
    weights.

    Args:
        backbone: Maps normalized inputs to ``(N, backbone_dim)``.
        backbone_dim: Output size of the backbone.
        num_classes: Number of classes.
        head: ``"linear"`` or ``"proxy"`` (see :func:`make_head`).
        normalize: Input normalization; ``None``: identity.
        feature_dim: Size of the linear neck; ``None``: no neck.
        proxy_mode: ProxyHead mode.
        scale: ProxyHead logit scale.
        seed: Seed of the proxy initialization.
        channels_last: See :class:`FeatureClassifier`.

    Returns:
        The model.

    Example:
        >>> net = assemble_classifier(nn.Flatten(), 4, 3, head="proxy", feature_dim=2)
        >>> [tuple(t.shape) for t in net(torch.zeros(5, 4))]
        [(5, 2), (5, 3)]
    """
    model = FeatureClassifier(
        backbone,
        nn.Identity(),
        normalize=normalize,
        feature_dim=feature_dim,
        backbone_dim=backbone_dim,
        channels_last=channels_last,
    )
    model.head = make_head(
        head, num_classes, model.feature_dim, proxy_mode=proxy_mode, scale=scale, seed=seed
    )
    return model


def build_classifier(
    arch: str,
    num_classes: int,
    in_channels: int = 3,
    *,
    feature_dim: int | None = 128,
    head: str = "linear",
    proxy_mode: str = "learnable",
    scale: float = 16.0,
    seed: int = 0,
    width: int = 32,
    convs_per_stage: int = 1,
    in_features: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    channels_last: bool = False,
) -> FeatureClassifier:
    """Builds a :class:`FeatureClassifier` from names.

    Args:
        arch: Backbone name (:data:`ARCHITECTURES` or ``"mlp"``).
        num_classes: Number of classes.
        in_channels: Image channels.
        feature_dim: Neck size; ``None`` uses the backbone output directly.
        head: ``"linear"`` or ``"proxy"``.
        proxy_mode: ProxyHead mode for ``head="proxy"``.
        scale: ProxyHead logit scale.
        seed: Proxy initialization seed (the weights use the global torch RNG: seed first).
        width: First-stage width of ``"cnn"``, hidden width of ``"mlp"``.
        convs_per_stage: Convolutions per stage of ``"cnn"``.
        in_features: Flattened input size of ``"mlp"``.
        mean: Per-channel input means (default 0.5 each).
        std: Per-channel input stds (default 0.25 each).
        channels_last: Build the model in channels-last memory format (see
            :class:`FeatureClassifier`).

    Returns:
        The model (on the CPU, in training mode).

    Example:
        >>> build_classifier("vgg16", 100, feature_dim=None).feature_dim
        512
    """
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")
    backbone = build_backbone(
        arch, in_channels, width=width, convs_per_stage=convs_per_stage, in_features=in_features
    )
    backbone_dim = int(getattr(backbone, "out_dim"))  # noqa: B009 - typed as nn.Module
    normalize = InputNormalize(
        mean if mean is not None else [0.5] * in_channels,
        std if std is not None else [0.25] * in_channels,
    )
    model = assemble_classifier(
        backbone,
        backbone_dim,
        num_classes,
        head=head,
        normalize=normalize,
        feature_dim=feature_dim,
        proxy_mode=proxy_mode,
        scale=scale,
        seed=seed,
        channels_last=channels_last,
    )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
