"""Class-stratified subsets and hold-out splits of in-memory image datasets.

* :func:`stratified_indices` -- ``round(size * share)`` random indices per class.
* :func:`subset` -- a stratified random subset of an :class:`~harness.data.images.
  ImageTensorDataset`.
* :func:`split_holdout` -- a stratified, disjoint ``(rest, held_out)`` split, for validation
  splits carved out of a training set.

Example:
    >>> images = torch.zeros(10, 1, 2, 2, dtype=torch.uint8)
    >>> ds = ImageTensorDataset(images, torch.arange(10) % 2)
    >>> [len(part) for part in split_holdout(ds, 4)]
    [6, 4]
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

from harness.data.images import DatasetInfo, ImageTensorDataset, load_image_dataset
from hug_plugins.utils import stratified_indices

__all__ = ["load_with_subsets", "split_holdout", "stratified_indices", "subset", "take"]


def subset(dataset: ImageTensorDataset, size: int | None, seed: int = 0) -> ImageTensorDataset:
    """A class-stratified random subset of about ``size`` samples (``None``: the dataset).

    Each class keeps ``round(size * share)`` samples (at least one), chosen with ``seed``; the
    result keeps the original order. The tensors are copied.

    Args:
        dataset: The dataset.
        size: Target size (>= number of classes present) or ``None``.
        seed: Seed of the selection.

    Returns:
        The subset (or ``dataset`` itself when ``size`` is ``None`` or not smaller).

    Example:
        >>> images = torch.zeros(10, 1, 2, 2, dtype=torch.uint8)
        >>> ds = ImageTensorDataset(images, torch.arange(10) % 2)
        >>> sub = subset(ds, 4)
        >>> len(sub), sorted(sub.targets.tolist())
        (4, [0, 0, 1, 1])
    """
    if size is None or size >= len(dataset):
        return dataset
    if size < 1:
        raise ValueError(f"size must be >= 1 or None, got {size}")
    return take(dataset, stratified_indices(dataset.targets, size, seed))


def take(dataset: ImageTensorDataset, index: Tensor) -> ImageTensorDataset:
    """A copy of the samples at ``index`` (same class names)."""
    return ImageTensorDataset(
        dataset.images[index].clone(), dataset.targets[index].clone(), dataset.classes
    )


def split_holdout(
    dataset: ImageTensorDataset, holdout: int, seed: int = 0
) -> tuple[ImageTensorDataset, ImageTensorDataset]:
    """Splits a dataset into ``(rest, held_out)``: a class-stratified, disjoint hold-out.

    For validation splits carved out of a training set (tune on these, never on test data).
    Each class gives ``round(holdout * share)`` samples (at least one) to the hold-out, chosen
    with ``seed``; both parts keep the original order and are copies.

    Args:
        dataset: The dataset.
        holdout: Target hold-out size, ``1 <= holdout < len(dataset)``.
        seed: Seed of the selection.

    Returns:
        ``(rest, held_out)``.

    Raises:
        ValueError: On a hold-out size outside that range.

    Example:
        >>> images = torch.zeros(10, 1, 2, 2, dtype=torch.uint8)
        >>> rest, val = split_holdout(ImageTensorDataset(images, torch.arange(10) % 2), 4)
        >>> len(rest), len(val), sorted(val.targets.tolist())
        (6, 4, [0, 0, 1, 1])
    """
    if not 1 <= holdout < len(dataset):
        raise ValueError(f"holdout must be in [1, {len(dataset)}), got {holdout}")
    held = stratified_indices(dataset.targets, holdout, seed)
    mask = torch.ones(len(dataset), dtype=torch.bool)
    mask[held] = False
    return take(dataset, torch.nonzero(mask).flatten()), take(dataset, held)


def load_with_subsets(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    image_size: Sequence[int] | None = None,
    split_seed: int = 0,
    test_fraction: float = 0.25,
    train_subset: int | None = None,
    test_subset: int | None = None,
    collapse_samples: int | None = None,
) -> tuple[ImageTensorDataset, ImageTensorDataset, ImageTensorDataset, DatasetInfo]:
    """``(train, test, collapse, info)``: a dataset with optional stratified subsets.

    ``train`` and ``test`` are stratified subsets of ``train_subset`` / ``test_subset`` images
    (seed 0; ``None``: all); ``collapse`` is a stratified subset of ``collapse_samples`` of the
    (sub-sampled) training images (seed 1), on which the collapse metrics are measured.

    Example:
        >>> train, test, collapse, info = load_with_subsets("digits", collapse_samples=100)
        >>> len(collapse), info.num_classes
        (100, 10)
    """
    train, test, info = load_image_dataset(
        name,
        root,
        image_size=image_size,
        split_seed=split_seed,
        test_fraction=test_fraction,
    )
    train = subset(train, train_subset, seed=0)
    test = subset(test, test_subset, seed=0)
    return train, test, subset(train, collapse_samples, seed=1), info
