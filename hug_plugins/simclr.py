"""SimCLR-style self-supervised benchmark parts: two-view data, model, criteria, kNN evaluation.

What ``integrations/selfsupervised.py`` trains and measures, as library code:

* data: :func:`load_ssl_datasets` -- digits (embedded; batched tensor views by
  :class:`DigitsViews` as the DataLoader's ``collate_fn``) or CIFAR-10 (through
  :func:`hug_plugins.data.load_image_dataset`; lightly's ``SimCLRTransform`` views);
* model: :class:`SimCLR`, a backbone + lightly's ``SimCLRProjectionHead``;
* criteria: :func:`build_criterion` -- :class:`~hug_plugins.ssl.HUGCriterion`, lightly's
  ``NTXentLoss`` or ``HypersphereLoss`` by name, and :class:`TwoViewLoss` for the trainer;
* evaluation: :func:`evaluate_ssl` -- kNN top-1 (lightly's ``knn_predict``), GNC2 and NC4 on the
  L2-normalized backbone features.

Example:
    >>> import torch
    >>> data = load_ssl_datasets("digits")
    >>> model = build_ssl_model("digits_cnn", width=4, proj_hidden=16, proj_dim=8)
    >>> views, labels = data.collate_fn([data.train[i] for i in range(4)])
    >>> loss = TwoViewLoss(build_criterion("hug", {}))(model, (views, labels))
    >>> bool(torch.isfinite(loss)), data.num_classes
    (True, 10)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from hug_plugins.data import load_digits_split, load_image_dataset, subset
from hug_plugins.metrics import NCMAgreement, NeuralCollapseMetrics
from hug_plugins.models import build_backbone
from hug_plugins.ssl import HUGCriterion

__all__ = [
    "CRITERIA",
    "CRITERION_NAMES",
    "SSL_BACKBONES",
    "DigitsViews",
    "EvalDataset",
    "SSLDatasets",
    "SimCLR",
    "TwoViewDataset",
    "TwoViewLoss",
    "backbone_features",
    "build_criterion",
    "build_ssl_model",
    "digits_cnn",
    "evaluate_ssl",
    "images_per_run",
    "load_ssl_datasets",
    "per_process_batch",
]

CRITERIA = ("hug", "ntxent", "hypersphere")
"""Criterion names accepted by :func:`build_criterion`."""

CRITERION_NAMES = {"hug": "HUGCriterion", "ntxent": "NTXentLoss", "hypersphere": "HypersphereLoss"}
"""Criterion name -> class name (the table's row label)."""


# ----------------------------------------------------------------------------- data


class TwoViewDataset(Dataset[tuple[list[Tensor], int]]):
    """Wraps ``(image, label)`` items: returns ``([view(image), view(image)], label)``."""

    def __init__(self, items: Callable[[int], tuple[Any, int]], length: int, view: Any) -> None:
        self.items = items
        self.length = length
        self.view = view

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[list[Tensor], int]:
        image, label = self.items(index)
        return [self.view(image), self.view(image)], label


class EvalDataset(Dataset[tuple[Any, int]]):
    """``(view(image), label)`` without augmentation (the image itself when ``view`` is None)."""

    def __init__(
        self, items: Callable[[int], tuple[Any, int]], length: int, view: Any = None
    ) -> None:
        self.items = items
        self.length = length
        self.view = view

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.items(index)
        return (image if self.view is None else self.view(image)), label


class DigitsViews:
    """Batched two-view augmentation for the 8x8 digits, used as the DataLoader ``collate_fn``.

    Each image of a batch gets two independent views, each a random resized crop (area
    fraction in ``crop_scale``, aspect ratio in [3/4, 4/3]) combined with a random rotation
    (``+-rotation`` degrees), applied as one affine warp (``affine_grid`` + ``grid_sample``,
    bilinear, zero padding), plus Gaussian pixel noise of std ``noise_std``. This is the
    transform torchvision's v2 ``RandomResizedCrop`` + ``RandomRotation`` apply per image,
    done for the whole batch at once: per-image v2 calls cost about 1 ms per 8x8 image on a
    CPU, more than the model itself. Lightly's image transforms expect natural RGB (PIL)
    images, hence this tensor version. Randomness comes from ``generator``, by default
    (``None``) torch's global generator, which the trainer seeds with the same seed on every
    rank; under DDP :meth:`for_rank` gives each rank its own stream.

    Example:
        >>> views = DigitsViews((0.5, 1.0), 10.0, 0.1)
        >>> [tuple(v.shape) for v in views([(torch.rand(1, 8, 8), 3)] * 2)[0]]
        [(2, 1, 8, 8), (2, 1, 8, 8)]
    """

    def __init__(
        self,
        crop_scale: Sequence[float],
        rotation: float,
        noise_std: float,
        generator: torch.Generator | None = None,
    ) -> None:
        self.scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.rotation = math.radians(float(rotation))
        self.noise_std = float(noise_std)
        self.generator = generator

    def for_rank(self, seed: int, rank: int) -> DigitsViews:
        """A copy drawing from its own generator seeded with ``(seed, rank)``."""
        state = np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint64)[0]
        generator = torch.Generator().manual_seed(int(state) % 2**63)
        return DigitsViews(
            self.scale, math.degrees(self.rotation), self.noise_std, generator=generator
        )

    def view(self, images: Tensor) -> Tensor:
        """One random view of every image of a ``(B, C, H, W)`` batch."""
        n, gen = images.shape[0], self.generator
        area = torch.empty(n).uniform_(*self.scale, generator=gen)
        log_ratio = torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen)
        ratio = torch.exp(log_ratio)
        sx = torch.sqrt(area * ratio).clamp(max=1.0)
        sy = torch.sqrt(area / ratio).clamp(max=1.0)
        tx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sx)
        ty = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sy)
        angle = (torch.rand(n, generator=gen) * 2 - 1) * self.rotation
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack(
            [
                torch.stack([sx * cos, -sy * sin, tx], dim=1),
                torch.stack([sx * sin, sy * cos, ty], dim=1),
            ],
            dim=1,
        )
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        out = F.grid_sample(images, grid, mode="bilinear", align_corners=False)
        noise = torch.randn(out.shape, generator=gen, dtype=out.dtype, device=out.device)
        return out + self.noise_std * noise

    def __call__(self, items: list[tuple[Tensor, int]]) -> tuple[list[Tensor], Tensor]:
        images = torch.stack([image for image, _ in items])
        labels = torch.tensor([label for _, label in items], dtype=torch.long)
        return [self.view(images), self.view(images)], labels


@dataclass
class SSLDatasets:
    """What :func:`load_ssl_datasets` returns.

    Attributes:
        train: Training set (two views per item for CIFAR-10; single images for digits, whose
            views :attr:`collate_fn` draws per batch).
        train_eval: The training images without augmentation (the kNN feature bank).
        test_eval: The test images without augmentation.
        num_classes: Number of classes.
        collate_fn: The DataLoader ``collate_fn`` of the training set (``None``: default).
    """

    train: Dataset[Any]
    train_eval: Dataset[Any]
    test_eval: Dataset[Any]
    num_classes: int
    collate_fn: DigitsViews | None


def load_ssl_datasets(
    name: str,
    root: str | None = None,
    *,
    split_seed: int = 0,
    test_fraction: float = 0.25,
    crop_scale: Sequence[float] = (0.5, 1.0),
    rotation: float = 15.0,
    noise_std: float = 0.05,
    train_subset: int | None = None,
) -> SSLDatasets:
    """The self-supervised datasets of ``"digits"`` or ``"cifar10"``.

    Args:
        name: ``"digits"`` (embedded) or ``"cifar10"`` (any root
            :func:`~hug_plugins.data.load_image_dataset` reads; nothing is downloaded).
        root: Data root (CIFAR-10).
        split_seed: Digits train/test split seed.
        test_fraction: Digits test share.
        crop_scale: Area range of the random resized crop (CIFAR-10: ``min_scale`` of
            lightly's ``SimCLRTransform``).
        rotation: Digits rotation range in degrees.
        noise_std: Digits pixel noise std.
        train_subset: CIFAR-10: a stratified subset of this many training images (seed 0;
            the kNN bank is the same subset); ``None``: all.

    Returns:
        The :class:`SSLDatasets`.
    """
    if name == "digits":
        train, test = load_digits_split(seed=split_seed, test_fraction=test_fraction)
        train_x, train_y = train.tensors[0].reshape(-1, 1, 8, 8), train.tensors[1].tolist()
        test_x, test_y = test.tensors[0].reshape(-1, 1, 8, 8), test.tensors[1].tolist()

        def train_item(i: int) -> tuple[Tensor, int]:
            return train_x[i], train_y[i]

        def test_item(i: int) -> tuple[Tensor, int]:
            return test_x[i], test_y[i]

        return SSLDatasets(
            EvalDataset(train_item, len(train_y)),
            EvalDataset(train_item, len(train_y)),
            EvalDataset(test_item, len(test_y)),
            10,
            DigitsViews(crop_scale, rotation, noise_std),
        )
    if name == "cifar10":
        return _cifar10(root, crop_scale, train_subset)
    raise ValueError(f"data.name must be 'digits' or 'cifar10', got {name!r}")


def _cifar10(
    root: str | None, crop_scale: Sequence[float], train_subset: int | None
) -> SSLDatasets:
    from lightly.transforms.simclr_transform import SimCLRTransform
    from lightly.transforms.utils import IMAGENET_NORMALIZE
    from PIL import Image
    from torchvision import transforms as T

    if root is None:
        raise ValueError("the cifar10 preset needs --data-root (or data.root=PATH)")
    train, test, info = load_image_dataset("cifar10", root)
    train = subset(train, train_subset, seed=0)
    train_x, test_x = (part.images.permute(0, 2, 3, 1).numpy() for part in (train, test))
    train_y, test_y = train.targets.tolist(), test.targets.tolist()
    ssl_view = SimCLRTransform(
        input_size=32, cj_strength=0.5, gaussian_blur=0.0, min_scale=float(crop_scale[0])
    ).transforms[0]
    plain = T.Compose(
        [T.ToTensor(), T.Normalize(mean=IMAGENET_NORMALIZE["mean"], std=IMAGENET_NORMALIZE["std"])]
    )

    def train_item(i: int) -> tuple[Any, int]:
        return Image.fromarray(train_x[i]), train_y[i]

    def test_item(i: int) -> tuple[Any, int]:
        return Image.fromarray(test_x[i]), test_y[i]

    return SSLDatasets(
        TwoViewDataset(train_item, len(train_y), ssl_view),
        EvalDataset(train_item, len(train_y), plain),
        EvalDataset(test_item, len(test_y), plain),
        info.num_classes,
        None,
    )


# ----------------------------------------------------------------------------- model


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
    classification job's :class:`~hug_plugins.backbones.SmallCNN` for RGB images, width
    ``width``, a CPU budget) or ``"resnet18_cifar"`` (the CIFAR ResNet-18 of
    :func:`~hug_plugins.backbones.build_backbone`).
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


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def backbone_features(
    model: SimCLR, data: Dataset[Any], batch_size: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """L2-normalized backbone features and labels of a dataset (eval mode, CPU float32)."""
    was_training = model.training
    model.eval()
    feats, labels = [], []
    for x, y in DataLoader(data, batch_size=batch_size, shuffle=False):
        f = model.backbone(x.to(device)).flatten(start_dim=1).float()
        feats.append(F.normalize(f, dim=1).cpu())
        labels.append(torch.as_tensor(y))
    model.train(was_training)
    return torch.cat(feats), torch.cat(labels).long()


def evaluate_ssl(
    model: SimCLR,
    train_eval: Dataset[Any],
    test_eval: Dataset[Any],
    num_classes: int,
    *,
    knn_k: int = 200,
    knn_t: float = 0.1,
    batch_size: int = 512,
    device: torch.device | None = None,
) -> dict[str, float]:
    """kNN top-1, GNC2 ratio, NC1 and NC4 agreement on the normalized backbone features.

    kNN: lightly's ``knn_predict`` with the training features as the bank. GNC2:
    :class:`~hug_plugins.metrics.NeuralCollapseMetrics` (Riesz s = 1) on the training
    features with the true labels. NC4: :class:`~hug_plugins.metrics.NCMAgreement`, how often
    the kNN decision on a test image equals the nearest-class-mean decision.
    """
    from lightly.utils.benchmarking import knn_predict

    dev = device if device is not None else next(model.parameters()).device
    bank, bank_labels = backbone_features(model, train_eval, batch_size, dev)
    test, test_labels = backbone_features(model, test_eval, batch_size, dev)
    k = min(knn_k, bank.shape[0])
    preds = []
    for start in range(0, test.shape[0], batch_size):
        query = test[start : start + batch_size]
        preds.append(knn_predict(query, bank.T, bank_labels, num_classes, k, knn_t)[:, 0])
    pred = torch.cat(preds)
    # The features are this process's full sets (rank 0 alone evaluates under DDP), so the
    # torchmetrics metrics must not sync across ranks.
    nc = NeuralCollapseMetrics(
        num_classes=num_classes, dim=bank.shape[1], s=1.0, sync_on_compute=False
    )
    nc.update(bank, bank_labels)
    stats = nc.compute()
    means, present = nc.class_means()
    agreement = NCMAgreement(means, present, sync_on_compute=False)
    agreement.update(test, test_labels, pred)
    nc4 = agreement.compute()
    return {
        "knn_top1": float((pred == test_labels).float().mean()),
        "gnc2_ratio": float(stats["gnc2_ratio"]),
        "nc1": float(stats["nc1"]),
        "nc4_agreement": float(nc4["nc4_agreement"]),
    }


# ----------------------------------------------------------------------------- DDP batches


def per_process_batch(global_batch: int, world: int) -> int:
    """The batch of each of ``world`` processes, for a *global* batch size.

    Example:
        >>> per_process_batch(128, 2)
        64
    """
    if global_batch % world:
        raise ValueError(
            f"trainer.batch_size={global_batch} is the global batch and must be divisible by "
            f"the number of processes ({world})"
        )
    return global_batch // world


def images_per_run(num_train: int, per_batch: int, world: int, epochs: int, drop_last: bool) -> int:
    """Training images (of all ranks) one run processes, as the trainer's loader yields them.

    Each rank's ``DistributedSampler`` takes ``floor(N / world)`` images with ``drop_last``,
    else ``ceil(N / world)`` (padded by repetition; the padding is not counted).

    Example:
        >>> images_per_run(1348, 64, 2, 1, True), images_per_run(1348, 128, 1, 1, True)
        (1280, 1280)
    """
    if drop_last:
        steps = (num_train // world) // per_batch
        return epochs * steps * per_batch * world
    return epochs * num_train
