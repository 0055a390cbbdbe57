"""Image datasets decoded once into in-memory uint8 tensors.

* :func:`load_image_dataset` -- ``(train, test, info)`` for ``"digits"`` (scikit-learn's
  embedded 8x8 digits, nothing to download), ``"mnist"``, ``"fashionmnist"``, ``"cifar10"``,
  ``"cifar100"`` (torchvision layouts under a data root, ``download=False``) or
  ``"imagefolder"`` (``<root>/train/<class>/*`` and ``<root>/test/<class>/*``). CIFAR-10 also
  falls back to an ImageFolder copy at ``<root>/cifar10-jpeg``. The decoded images are kept in
  a process-wide cache (:func:`clear_cache`), so a job that trains many models decodes once.
* :class:`ImageTensorDataset` -- ``(uint8 image (C, H, W), label)`` pairs backed by two
  tensors; indexing is a tensor slice, so a multi-epoch run never touches the files again.

Example:
    >>> train, test, info = load_image_dataset("digits")
    >>> image, label = train[0]
    >>> tuple(image.shape), image.dtype, info.num_classes
    ((1, 8, 8), torch.uint8, 10)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "ImageTensorDataset",
    "channel_stats",
    "clear_cache",
    "decode_dataset",
    "extraction_cache_dir",
    "load_image_dataset",
]

DATASETS = ("digits", "mnist", "fashionmnist", "cifar10", "cifar100", "imagefolder")
"""Names accepted by :func:`load_image_dataset`."""

_CACHE: dict[tuple[Any, ...], tuple[ImageTensorDataset, ImageTensorDataset]] = {}


class ImageTensorDataset(Dataset[tuple[Tensor, Tensor]]):
    """Images ``(N, C, H, W)`` uint8 and labels ``(N,)`` int64 held in memory.

    Args:
        images: ``(N, C, H, W)`` uint8 tensor.
        targets: ``(N,)`` integer labels in ``[0, num_classes)``.
        classes: Class names (default ``"0"``, ``"1"``, ...).

    Raises:
        ValueError: On mismatched shapes or dtypes, or labels out of range.

    Example:
        >>> images = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
        >>> ds = ImageTensorDataset(images, torch.tensor([0, 1]))
        >>> len(ds), ds.num_classes, int(ds[1][1])
        (2, 2, 1)
    """

    def __init__(
        self, images: Tensor, targets: Tensor, classes: Sequence[str] | None = None
    ) -> None:
        if not isinstance(images, Tensor) or images.ndim != 4 or images.dtype != torch.uint8:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a (N, C, H, W) uint8 tensor, got {shape}")
        targets = torch.as_tensor(targets).long()
        if targets.shape != (images.shape[0],):
            raise ValueError(
                f"targets must have shape ({images.shape[0]},), got {tuple(targets.shape)}"
            )
        if classes is None:
            count = int(targets.max()) + 1 if targets.numel() else 0
            classes = [str(i) for i in range(count)]
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= len(classes)):
            raise ValueError(f"labels must lie in [0, {len(classes)})")
        self.images = images.contiguous()
        self.targets = targets
        self.classes = list(classes)

    @property
    def num_classes(self) -> int:
        """Number of classes (length of :attr:`classes`)."""
        return len(self.classes)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.targets[index]


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset.

    Attributes:
        name: Dataset name.
        num_classes: Number of classes.
        in_channels: Image channels.
        image_size: ``(H, W)``.
        mean: Per-channel mean of the training images, in ``[0, 1]`` units.
        std: Per-channel standard deviation of the training images.
        source: Where the images came from (a path or ``"sklearn"``).
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str


def channel_stats(images: Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in ``[0, 1]`` units (chunked, float64).

    Args:
        images: ``(N, C, H, W)`` uint8.
        chunk: Images per chunk.

    Returns:
        ``(mean, std)`` tuples of length ``C``.

    Example:
        >>> channel_stats(torch.tensor([[[[0, 255]]]], dtype=torch.uint8))
        ((0.5,), (0.5,))
    """
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        block = images[start : start + chunk].double() / 255.0
        total += block.sum(dim=(0, 2, 3))
        total_sq += block.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _to_chw_uint8(image: Any, size: tuple[int, int] | None, mode: str | None) -> Tensor:
    """Converts a PIL image, ndarray (HW/HWC) or tensor (HW/CHW) to a (C, H, W) uint8 tensor."""
    if hasattr(image, "convert"):  # PIL
        if mode is not None and image.mode != mode:
            image = image.convert(mode)
        if size is not None and image.size != (size[1], size[0]):
            from PIL import Image

            image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
        tensor = torch.from_numpy(array.copy())
        return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()
    if isinstance(image, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(image))
        if tensor.ndim == 3:
            tensor = tensor.permute(2, 0, 1)
    elif isinstance(image, Tensor):
        tensor = image
    else:
        raise ValueError(f"cannot decode a sample image of type {type(image).__name__}")
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.dtype != torch.uint8:
        tensor = (tensor.float().clamp(0, 1) * 255).round().to(torch.uint8)
    if size is not None and tuple(tensor.shape[1:]) != size:
        resized = nn.functional.interpolate(
            tensor[None].float(), size=size, mode="bilinear", align_corners=False
        )
        tensor = resized[0].round().clamp(0, 255).to(torch.uint8)
    return tensor.contiguous()


def decode_dataset(
    dataset: Any,
    *,
    image_size: tuple[int, int] | None = None,
    mode: str | None = None,
    num_threads: int | None = None,
) -> ImageTensorDataset:
    """Decodes any ``(image, label)`` dataset (torchvision, ImageFolder, ...) into memory.

    Fast paths: a torchvision dataset with array ``data`` (CIFAR: ``(N, H, W, C)`` uint8; MNIST:
    ``(N, H, W)``) and ``targets`` is converted without decoding sample by sample. Otherwise
    every sample is loaded (with a thread pool; PIL releases the GIL while decoding).

    Args:
        dataset: Indexable ``(image, label)`` dataset; ``classes`` is used when present.
        image_size: ``(H, W)`` to resize to; ``None`` requires all images to have one size.
        mode: PIL mode to convert to (e.g. ``"RGB"``, ``"L"``); ``None`` keeps it.
        num_threads: Decoding threads (default: up to 8, at most the CPU count).

    Returns:
        The in-memory dataset.

    Raises:
        ValueError: On an empty dataset or images of different sizes without ``image_size``.
    """
    classes = getattr(dataset, "classes", None)
    data = getattr(dataset, "data", None)
    targets = getattr(dataset, "targets", None)
    if (
        image_size is None
        and mode is None
        and targets is not None
        and isinstance(data, (np.ndarray, Tensor))
        and data.ndim in (3, 4)
        and torch.as_tensor(data).dtype == torch.uint8
        and getattr(dataset, "transform", None) is None
    ):
        images = torch.as_tensor(data)
        images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
        return ImageTensorDataset(images.contiguous(), torch.as_tensor(targets), classes)
    n = len(dataset)
    if n == 0:
        raise ValueError("cannot decode an empty dataset")

    def load(index: int) -> tuple[Tensor, int]:
        image, label = dataset[index][:2]
        return _to_chw_uint8(image, image_size, mode), int(label)

    threads = num_threads if num_threads is not None else min(8, os.cpu_count() or 1)
    if threads > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            samples = list(pool.map(load, range(n), chunksize=256))
    else:
        samples = [load(i) for i in range(n)]
    shapes = {tuple(s[0].shape) for s in samples}
    if len(shapes) > 1:
        raise ValueError(
            f"images have different shapes {sorted(shapes)[:4]}; set an image size "
            "(data.image_size=[H,W]) to resize them"
        )
    images = torch.stack([s[0] for s in samples])
    labels = torch.tensor([s[1] for s in samples], dtype=torch.int64)
    return ImageTensorDataset(images, labels, classes)


def _digits(seed: int, test_fraction: float) -> tuple[ImageTensorDataset, ImageTensorDataset]:
    from harness.data.tabular import load_digits_split

    out = []
    for split in load_digits_split(seed, test_fraction=test_fraction):
        features, labels = split.tensors
        images = (features.view(-1, 1, 8, 8) * 255.0).round().to(torch.uint8)
        out.append(ImageTensorDataset(images, labels, [str(i) for i in range(10)]))
    return out[0], out[1]


def _folder_pair(
    root: Path, image_size: tuple[int, int] | None, mode: str | None
) -> tuple[ImageTensorDataset, ImageTensorDataset]:
    from torchvision.datasets import ImageFolder

    splits = []
    for split in ("train", "test"):
        folder = root / split
        if not folder.is_dir():
            raise ValueError(f"ImageFolder split {str(folder)!r} does not exist")
        splits.append(decode_dataset(ImageFolder(str(folder)), image_size=image_size, mode=mode))
    if splits[0].classes != splits[1].classes:
        raise ValueError(f"train and test class folders differ under {str(root)!r}")
    return splits[0], splits[1]


def _torchvision_folder(name: str) -> str:
    """The folder torchvision keeps a dataset in under its root (``MNIST``, ``FashionMNIST``)."""
    return {"mnist": "MNIST", "fashionmnist": "FashionMNIST"}.get(name, name)


def extraction_cache_dir() -> Path:
    """Where archives are extracted once: ``$HUG_PLUGINS_CACHE`` or ``~/.cache/hug_plugins``."""
    return Path(os.environ.get("HUG_PLUGINS_CACHE", Path.home() / ".cache" / "hug_plugins"))


def _cifar100_folder(base: Path) -> Path:
    """``<base>/cifar100-jpeg``, or the archive ``<base>/cifar100-jpeg.tar.gz`` extracted once.

    The archive is unpacked into a temporary folder of :func:`extraction_cache_dir` and renamed
    into place, so a killed extraction never leaves a half tree that looks complete.
    """
    if (base / "cifar100-jpeg").is_dir():
        return base / "cifar100-jpeg"
    import tarfile
    import tempfile

    archive = base / "cifar100-jpeg.tar.gz"
    cache = extraction_cache_dir()
    target = cache / "cifar100-jpeg"
    if not target.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp, tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
            extracted = Path(tmp) / "cifar100-jpeg"
            if not (extracted / "train").is_dir():
                raise ValueError(f"{str(archive)!r} holds no cifar100-jpeg/train folder")
            try:
                extracted.rename(target)
            except OSError:  # another process finished first
                if not target.is_dir():
                    raise
    return target


def _torchvision_pair(
    name: str, root: Path, image_size: tuple[int, int] | None
) -> tuple[ImageTensorDataset, ImageTensorDataset]:
    import torchvision.datasets as tvd

    factories: dict[str, Callable[..., Any]] = {
        "mnist": tvd.MNIST,
        "fashionmnist": tvd.FashionMNIST,
        "cifar10": tvd.CIFAR10,
        "cifar100": tvd.CIFAR100,
    }
    factory = factories[name]
    pair = []
    for train in (True, False):
        try:
            dataset = factory(str(root), train=train, download=False)
        except (RuntimeError, OSError) as exc:
            raise ValueError(
                f"could not load {name} from {str(root)!r} (torchvision layout, nothing is "
                f"downloaded): {exc}"
            ) from None
        pair.append(decode_dataset(dataset, image_size=image_size))
    return pair[0], pair[1]


def load_image_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    image_size: Sequence[int] | None = None,
    split_seed: int = 0,
    test_fraction: float = 0.25,
    cache: bool = True,
) -> tuple[ImageTensorDataset, ImageTensorDataset, DatasetInfo]:
    """Loads ``(train, test)`` of a dataset into memory (once per process with ``cache``).

    Args:
        name: One of :data:`DATASETS`.
        root: Data root: the torchvision root (``mnist``, ``fashionmnist``, ``cifar10``,
            ``cifar100``; for the first two also a folder holding ``mnist/`` or
            ``fashionmnist/``), an ImageFolder root with ``train/`` and ``test/`` (``imagefolder``;
            also accepted for ``cifar10``/``cifar100`` when it holds ``train/`` and ``test/``),
            or a folder holding ``cifar10-jpeg/`` (``cifar10``) or ``cifar100-jpeg/`` or
            ``cifar100-jpeg.tar.gz`` (``cifar100``; the archive is extracted once into
            :func:`extraction_cache_dir`). Unused for ``digits``.
        image_size: ``(H, W)`` to resize ImageFolder images to (``None``: keep; all must match).
        split_seed: Seed of the stratified train/test split of ``digits``.
        test_fraction: Test share of ``digits``.
        cache: Keep the decoded tensors for later calls with the same arguments.

    Returns:
        ``(train, test, info)``; ``info.mean``/``info.std`` are the training-set channel
        statistics.

    Raises:
        ValueError: For an unknown name, a missing root or files that cannot be read.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {list(DATASETS)}")
    size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
    if name != "digits" and root is None:
        raise ValueError(f"dataset {name!r} needs a data root (--data-root / data.root)")
    base = Path(root) if root is not None else None
    key = (name, str(base.resolve()) if base else None, size, split_seed, test_fraction)
    pair = _CACHE.get(key) if cache else None
    source = "sklearn" if base is None else str(base)
    if pair is None:
        if name == "digits":
            pair = _digits(split_seed, test_fraction)
        else:
            assert base is not None
            if not base.is_dir():
                raise ValueError(f"data root {str(base)!r} is not a directory")
            has_folders = (base / "train").is_dir() and (base / "test").is_dir()
            if name == "imagefolder" or (name in ("cifar10", "cifar100") and has_folders):
                pair = _folder_pair(base, size, "RGB" if name != "imagefolder" else None)
            elif (
                name == "cifar10"
                and (base / "cifar10-jpeg").is_dir()
                and not (base / "cifar-10-batches-py").is_dir()
            ):
                source = str(base / "cifar10-jpeg")
                pair = _folder_pair(base / "cifar10-jpeg", size, "RGB")
            elif (
                name == "cifar100"
                and not (base / "cifar-100-python").is_dir()
                and ((base / "cifar100-jpeg").is_dir() or (base / "cifar100-jpeg.tar.gz").is_file())
            ):
                folder = _cifar100_folder(base)
                source = str(folder)
                pair = _folder_pair(folder, size, "RGB")
            else:
                nested = base / name  # a data root that holds mnist/MNIST/raw
                if (
                    name in ("mnist", "fashionmnist")
                    and not (base / _torchvision_folder(name)).is_dir()
                    and nested.is_dir()
                ):
                    base = nested
                    source = str(base)
                pair = _torchvision_pair(name, base, size)
        if cache:
            _CACHE[key] = pair
    train, test = pair
    if train.images.shape[1:] != test.images.shape[1:]:
        raise ValueError(
            f"train and test images differ in shape: {tuple(train.images.shape[1:])} vs "
            f"{tuple(test.images.shape[1:])}"
        )
    mean, std = channel_stats(train.images)
    info = DatasetInfo(
        name=name,
        num_classes=max(train.num_classes, test.num_classes),
        in_channels=int(train.images.shape[1]),
        image_size=(int(train.images.shape[2]), int(train.images.shape[3])),
        mean=mean,
        std=std,
        source=source,
    )
    return train, test, info


def clear_cache() -> None:
    """Drops every dataset decoded by :func:`load_image_dataset`."""
    _CACHE.clear()
