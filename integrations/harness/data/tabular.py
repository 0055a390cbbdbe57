"""Small, download-free datasets for the integration jobs and the tests.

* :func:`load_digits_split` -- scikit-learn's embedded 8x8 handwritten digits (1,797 images, 10
  classes), shipped with scikit-learn, so nothing is downloaded.
* :func:`make_blobs_dataset` -- Gaussian clusters for fast unit tests.

Example:
    >>> train, test = load_digits_split(seed=0)
    >>> x, y = train[0]
    >>> x.shape, x.dtype, y.dtype
    (torch.Size([64]), torch.float32, torch.int64)
    >>> len(train) + len(test)
    1797
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = [
    "DIGITS_NUM_CLASSES",
    "DIGITS_NUM_FEATURES",
    "load_digits_arrays",
    "load_digits_split",
    "make_blobs_dataset",
]

DIGITS_NUM_CLASSES = 10
"""Number of classes of the digits data set."""

DIGITS_NUM_FEATURES = 64
"""Input width of the digits data set (8x8 pixels, flattened)."""


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits in scikit-learn's order: features ``(N, 64)`` float32 in ``[0, 1]``
    (intensities ``v / 16``) and labels ``(N,)`` int64.

    Example:
        >>> x, y = load_digits_arrays()
        >>> x.shape, float(x.max()), int(y[0])
        ((1797, 64), 1.0, 0)
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    features = np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)
    return features, np.asarray(bunch.target, dtype=np.int64)


def load_digits_split(
    seed: int, test_fraction: float = 0.25
) -> tuple[TensorDataset, TensorDataset]:
    """Loads scikit-learn's digits and splits them into stratified train/test sets.

    Pixel intensities (0..16) are scaled to ``[0, 1]``.

    Args:
        seed: Seed of the stratified shuffle split; the same seed gives the same split.
        test_fraction: Fraction of the samples put in the test set, in ``(0, 1)``.

    Returns:
        ``(train, test)`` :class:`~torch.utils.data.TensorDataset` s of
        ``(features (N, 64) float32, labels (N,) int64)``.

    Raises:
        ValueError: If ``test_fraction`` is not in ``(0, 1)`` or too small/large to hold every
            class on both sides.

    Example:
        >>> train, test = load_digits_split(seed=1, test_fraction=0.5)
        >>> float(train.tensors[0].max()) <= 1.0
        True
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.model_selection import train_test_split

    features, labels = load_digits_arrays()
    n_test = round(test_fraction * len(labels))
    if n_test < DIGITS_NUM_CLASSES or len(labels) - n_test < DIGITS_NUM_CLASSES:
        raise ValueError(
            f"test_fraction={test_fraction} leaves {n_test} test and {len(labels) - n_test} "
            f"train samples; each side needs at least {DIGITS_NUM_CLASSES} (one per class)"
        )
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=n_test, random_state=seed, stratify=labels
    )
    train = TensorDataset(
        torch.from_numpy(np.ascontiguousarray(x_train)), torch.from_numpy(y_train)
    )
    test = TensorDataset(torch.from_numpy(np.ascontiguousarray(x_test)), torch.from_numpy(y_test))
    return train, test


def make_blobs_dataset(
    num_classes: int,
    dim: int,
    n_per_class: int,
    seed: int,
    *,
    spread: float = 0.3,
    separation: float = 2.0,
) -> TensorDataset:
    """Makes a Gaussian-blob classification dataset (one isotropic cluster per class).

    Cluster centres are random directions scaled to norm ``separation``; samples are the centre
    plus Gaussian noise of standard deviation ``spread``. Samples are ordered class by class.

    Args:
        num_classes: Number of classes (>= 1).
        dim: Feature dimension (>= 1).
        n_per_class: Samples per class (>= 1).
        seed: Seed; the same arguments give bit-identical data.
        spread: Noise standard deviation (>= 0).
        separation: Norm of the cluster centres (> 0).

    Returns:
        A :class:`~torch.utils.data.TensorDataset` of ``(features (N, dim) float32,
        labels (N,) int64)`` with ``N = num_classes * n_per_class``.

    Raises:
        ValueError: On a non-positive size or a negative ``spread``.

    Example:
        >>> ds = make_blobs_dataset(num_classes=3, dim=4, n_per_class=5, seed=0)
        >>> len(ds), ds.tensors[0].shape, ds.tensors[1].tolist()[:6]
        (15, torch.Size([15, 4]), [0, 0, 0, 0, 0, 1])
    """
    for name, value in (("num_classes", num_classes), ("dim", dim), ("n_per_class", n_per_class)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if spread < 0:
        raise ValueError(f"spread must be >= 0, got {spread}")
    if separation <= 0:
        raise ValueError(f"separation must be > 0, got {separation}")
    gen = torch.Generator().manual_seed(int(seed))
    centres = torch.randn(num_classes, dim, generator=gen)
    centres = centres / centres.norm(dim=1, keepdim=True).clamp_min(1e-12) * separation
    labels = torch.arange(num_classes, dtype=torch.int64).repeat_interleave(n_per_class)
    noise = torch.randn(num_classes * n_per_class, dim, generator=gen) * spread
    features = (centres[labels] + noise).to(torch.float32)
    return TensorDataset(features, labels)
