"""Datasets as float ``[0, 1]`` pixel tensors, for jobs that attack or resample their inputs.

The robustness and long-tail jobs keep inputs in ``[0, 1]`` pixel space (the eps-ball of an
attack is in pixel units) and put the normalization inside the model. :func:`load_pixel_datasets`
reads the same sources as :func:`~harness.data.images.load_image_dataset` (it calls it for
every image set) and converts them to float; digits stay the flat ``(64,)`` vectors of
:func:`~harness.data.tabular.load_digits_split` (values ``v / 16`` exactly).

Example:
    >>> train, test, info = load_pixel_datasets("digits")
    >>> info.input_shape, info.num_classes, len(train) + len(test)
    ((64,), 10, 1797)
    >>> float(train.tensors[0].max()) <= 1.0 and bool(train.targets.equal(train.tensors[1]))
    True
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from torch.utils.data import TensorDataset

from harness.data.images import load_image_dataset
from harness.data.tabular import load_digits_split

__all__ = ["PIXEL_DATASETS", "PixelDatasetInfo", "load_pixel_datasets"]

PIXEL_DATASETS = ("digits", "mnist", "fashionmnist", "cifar10", "cifar100")
"""Names accepted by :func:`load_pixel_datasets`."""

_DIGITS_STATS = ((0.3053,), (0.3760,))
"""Pixel mean and std of the whole digits set (``v / 16``), fixed so that every split agrees."""


@dataclass(frozen=True)
class PixelDatasetInfo:
    """What a model needs to know about a pixel dataset.

    Attributes:
        name: Dataset name.
        input_shape: Shape of one input: ``(64,)`` for digits, ``(C, H, W)`` for images.
        num_classes: Number of classes.
        mean: Per-channel pixel mean (training set; digits: whole set).
        std: Per-channel pixel standard deviation.
    """

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _with_targets(dataset: TensorDataset) -> TensorDataset:
    dataset.targets = dataset.tensors[1]  # type: ignore[attr-defined]
    return dataset


def load_pixel_datasets(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    split_seed: int = 0,
    test_fraction: float = 0.25,
) -> tuple[TensorDataset, TensorDataset, PixelDatasetInfo]:
    """Loads ``(train, test, info)`` as float ``[0, 1]`` tensor datasets exposing ``targets``.

    Args:
        name: One of :data:`PIXEL_DATASETS`.
        root: Data root (see :func:`~harness.data.images.load_image_dataset`; not needed
            for digits). Nothing is downloaded.
        split_seed: Seed of the digits train/test split.
        test_fraction: Digits test share.

    Returns:
        ``(train, test, info)``.

    Raises:
        ValueError: For an unknown name or a missing root.
    """
    if name not in PIXEL_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {list(PIXEL_DATASETS)}")
    if name == "digits":
        train, test = load_digits_split(split_seed, test_fraction=test_fraction)
        info = PixelDatasetInfo(name, (64,), 10, *_DIGITS_STATS)
        return _with_targets(train), _with_targets(test), info
    images_train, images_test, image_info = load_image_dataset(name, root)
    train, test = (
        _with_targets(TensorDataset(part.images.float().div(255.0), part.targets))
        for part in (images_train, images_test)
    )
    info = PixelDatasetInfo(
        name,
        tuple(int(s) for s in images_train.images.shape[1:]),
        image_info.num_classes,
        image_info.mean,
        image_info.std,
    )
    return train, test, info
