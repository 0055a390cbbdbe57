"""Two-view training data and plain evaluation data of the SimCLR-style benchmark."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from harness.data import load_digits_split, load_image_dataset, subset


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
            :func:`~harness.data.load_image_dataset` reads; nothing is downloaded).
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
