"""Long-tailed training sets (the LDAM construction) and per-shot-group accuracy.

:func:`make_longtail` keeps ``n_max * ratio^(c / (C - 1))`` samples of class ``c`` (Cao et al.,
LDAM, NeurIPS 2019), drawn with a private generator; :func:`shot_groups` splits the classes
into many / medium / few-shot groups and :func:`group_accuracies` reports the accuracy of each.

Reference:
    Cao, Wei, Gaidon, Arechiga, Ma. "Learning Imbalanced Datasets with Label-Distribution-Aware
    Margin Loss." NeurIPS 2019.

Examples:
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> y = torch.arange(4).repeat_interleave(100)
    >>> data = TensorDataset(torch.randn(400, 2), y)
    >>> lt = make_longtail(data, ratio=0.1)
    >>> lt.class_counts
    [100, 46, 21, 10]
    >>> len(lt), sorted(set(lt.targets.tolist()))
    (177, [0, 1, 2, 3])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

__all__ = [
    "PAPER_RATIOS",
    "SHOT_GROUPS",
    "LongTailSubset",
    "dataset_targets",
    "group_accuracies",
    "longtail_counts",
    "longtail_indices",
    "make_longtail",
    "per_class_accuracy",
    "shot_groups",
    "shot_thresholds",
]

PAPER_RATIOS = (0.2, 0.1, 0.02, 0.01)
"""Imbalance ratios ``n_min / n_max`` of the HUG paper's long-tail tables."""

SHOT_GROUPS = ("many", "medium", "few")
"""Names of the shot groups, from head to tail."""


def dataset_targets(dataset: Any) -> Tensor:
    """Returns the labels of every sample of ``dataset`` as an int64 tensor (no image decoding).

    Looks, in order, for a :class:`~torch.utils.data.Subset` (labels of the parent at its
    indices), a ``targets`` attribute (torchvision datasets, ImageFolder), ``samples`` of
    ``(path, label)`` pairs, the second tensor of a TensorDataset, and finally iterates the
    dataset reading ``item[1]``.

    Args:
        dataset: An indexable dataset.

    Returns:
        ``(N,)`` int64 tensor.

    Raises:
        ValueError: If no labels can be found.

    Examples:
        >>> from torch.utils.data import TensorDataset, Subset
        >>> ds = TensorDataset(torch.zeros(3, 1), torch.tensor([2, 0, 1]))
        >>> dataset_targets(Subset(ds, [2, 0])).tolist()
        [1, 2]
    """
    if isinstance(dataset, Subset):
        parent = dataset_targets(dataset.dataset)
        return parent[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return torch.as_tensor(np.asarray(targets), dtype=torch.long).reshape(-1)
    samples = getattr(dataset, "samples", None)
    if isinstance(samples, Sequence) and samples and isinstance(samples[0], tuple):
        return torch.as_tensor([int(s[1]) for s in samples], dtype=torch.long)
    tensors = getattr(dataset, "tensors", None)
    if isinstance(tensors, tuple) and len(tensors) >= 2 and isinstance(tensors[1], Tensor):
        return tensors[1].detach().to("cpu", torch.long).reshape(-1)
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        labels = []
        for i in range(len(dataset)):
            item = dataset[i]
            if not isinstance(item, (tuple, list)) or len(item) < 2:
                raise ValueError(f"cannot read a label from item {i} of {type(dataset).__name__}")
            labels.append(int(item[1]))
        return torch.as_tensor(labels, dtype=torch.long)
    raise ValueError(f"cannot read labels of {type(dataset).__name__}")


def _check_ratio(ratio: float) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")


def longtail_counts(n_max: int, num_classes: int, ratio: float) -> list[int]:
    """Samples kept per class: ``int(n_max * ratio ** (c / (C - 1)))`` for ``c = 0..C-1``.

    Args:
        n_max: Samples of the head class (>= 1).
        num_classes: ``C >= 2``.
        ratio: Imbalance ratio ``n_min / n_max`` in ``(0, 1]``.

    Returns:
        The ``C`` counts, non-increasing.

    Raises:
        ValueError: On invalid arguments.

    Examples:
        >>> longtail_counts(5000, 10, 0.01)
        [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    """
    if int(n_max) != n_max or n_max < 1:
        raise ValueError(f"n_max must be a positive integer, got {n_max!r}")
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    _check_ratio(ratio)
    return [int(n_max * ratio ** (c / (num_classes - 1.0))) for c in range(int(num_classes))]


def longtail_indices(
    targets: Tensor | Sequence[int],
    ratio: float,
    *,
    num_classes: int | None = None,
    n_max: int | None = None,
    seed: int = 0,
) -> tuple[Tensor, list[int]]:
    """Indices of the LDAM long-tailed subset of a labelled set.

    One ``numpy.random.RandomState(seed)`` shuffles the indices of each class in turn, in label
    order; class ``c`` keeps the first ``n_c`` (:func:`longtail_counts`). With ``seed=0`` and
    the CIFAR-10 training labels this is the selection of LDAM-DRW's ``IMBALANCECIFAR10``.

    Args:
        targets: ``(N,)`` labels in ``0..C-1``.
        ratio: Imbalance ratio in ``(0, 1]``.
        num_classes: ``C``; defaults to ``max(targets) + 1``.
        n_max: Head-class size; defaults to the size of the largest class. A class with fewer
            than ``n_c`` samples keeps all of them.
        seed: Seed of the shuffle (the paper's construction uses 0).

    Returns:
        ``(indices, counts)``: the kept indices (class by class, each in shuffled order) and the
        number kept per class.

    Raises:
        ValueError: On an empty or out-of-range label set or an invalid ratio.

    Examples:
        >>> idx, counts = longtail_indices(torch.tensor([0, 0, 1, 1]), ratio=0.5)
        >>> counts, sorted(idx[:2].tolist())
        ([2, 1], [0, 1])
    """
    labels = torch.as_tensor(targets, dtype=torch.long).reshape(-1).cpu()
    if labels.numel() == 0:
        raise ValueError("targets is empty")
    if int(labels.min()) < 0:
        raise ValueError("targets must be non-negative class indices")
    classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if int(labels.max()) >= classes:
        raise ValueError(f"targets has label {int(labels.max())} >= num_classes={classes}")
    sizes = torch.bincount(labels, minlength=classes)
    head = int(sizes.max()) if n_max is None else int(n_max)
    counts = longtail_counts(head, classes, ratio)
    rng = np.random.RandomState(seed)
    labels_np = labels.numpy()
    kept: list[np.ndarray] = []
    kept_counts: list[int] = []
    for c in range(classes):
        idx = np.where(labels_np == c)[0]
        rng.shuffle(idx)
        chosen = idx[: counts[c]]
        kept.append(chosen)
        kept_counts.append(len(chosen))
    return torch.from_numpy(np.concatenate(kept).astype(np.int64)), kept_counts


class LongTailSubset(Subset[Any]):
    """A :class:`~torch.utils.data.Subset` that also knows its labels and class sizes.

    Attributes:
        targets: ``(n,)`` int64 labels of the kept samples, in subset order.
        class_counts: Samples kept per class.
        ratio: The imbalance ratio it was built with.
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        indices: Tensor,
        targets: Tensor,
        counts: list[int],
        ratio: float,
    ) -> None:
        super().__init__(dataset, indices.tolist())
        self.targets = targets
        self.class_counts = list(counts)
        self.ratio = float(ratio)


def make_longtail(
    dataset: Dataset[Any],
    ratio: float,
    *,
    num_classes: int | None = None,
    n_max: int | None = None,
    seed: int = 0,
) -> LongTailSubset:
    """Builds the LDAM-style long-tailed version of a (balanced) training set.

    Args:
        dataset: Any dataset :func:`dataset_targets` can read.
        ratio: Imbalance ratio ``n_min / n_max`` in ``(0, 1]`` (1 keeps the set balanced at
            ``n_max`` per class).
        num_classes: Number of classes; defaults to ``max(label) + 1``.
        n_max: Head-class size; defaults to the largest class.
        seed: Shuffle seed (0 in the paper's construction).

    Returns:
        A :class:`LongTailSubset`.

    Examples:
        >>> from torch.utils.data import TensorDataset
        >>> ds = TensorDataset(torch.zeros(30, 1), torch.arange(3).repeat(10))
        >>> make_longtail(ds, 0.2).class_counts
        [10, 4, 2]
    """
    targets = dataset_targets(dataset)
    indices, counts = longtail_indices(
        targets, ratio, num_classes=num_classes, n_max=n_max, seed=seed
    )
    return LongTailSubset(dataset, indices, targets[indices], counts, ratio)


def shot_thresholds(
    n_max: int, many: float = 100.0, few: float = 20.0, reference_n_max: int = 500
) -> tuple[float, float]:
    """The many/few-shot thresholds, scaled down for small training sets.

    Args:
        n_max: Head-class size of the long-tailed training set.
        many: Many-shot threshold for ``n_max >= reference_n_max`` (classes with more samples).
        few: Few-shot threshold (classes with fewer samples).
        reference_n_max: The ``n_max`` the thresholds were made for (500: CIFAR-100-LT).

    Returns:
        ``(many, few)`` multiplied by ``min(1, n_max / reference_n_max)``.

    Examples:
        >>> shot_thresholds(5000)
        (100.0, 20.0)
        >>> shot_thresholds(135)
        (27.0, 5.4)
    """
    if n_max < 1 or reference_n_max < 1 or not 0 < few <= many:
        raise ValueError(
            f"need n_max >= 1, reference_n_max >= 1 and 0 < few <= many; got {n_max}, "
            f"{reference_n_max}, few={few}, many={many}"
        )
    factor = min(1.0, n_max / reference_n_max)
    return many * factor, few * factor


def shot_groups(
    class_counts: Sequence[int], many: float = 100.0, few: float = 20.0
) -> dict[str, list[int]]:
    """Splits classes by training-set size: many (> ``many``), medium, few (< ``few``).

    Args:
        class_counts: Training samples per class.
        many: Classes with more samples than this are many-shot.
        few: Classes with fewer samples than this are few-shot; the rest (``few`` to ``many``
            inclusive) are medium-shot.

    Returns:
        ``{"many": [...], "medium": [...], "few": [...]}`` class indices (a group may be empty).

    Examples:
        >>> shot_groups([500, 100, 20, 19])
        {'many': [0], 'medium': [1, 2], 'few': [3]}
    """
    groups: dict[str, list[int]] = {name: [] for name in SHOT_GROUPS}
    for c, n in enumerate(class_counts):
        key = "many" if n > many else "few" if n < few else "medium"
        groups[key].append(c)
    return groups


@torch.no_grad()
def per_class_accuracy(
    model: nn.Module,
    data: Dataset[Any] | DataLoader[Any],
    num_classes: int,
    *,
    batch_size: int = 512,
    device: str | torch.device | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-class top-1 accuracy of a classifier that returns logits or ``(features, logits)``.

    The model is evaluated in eval mode (its mode is restored afterwards).

    Args:
        model: The classifier.
        data: Dataset or loader of ``(inputs, labels, ...)``.
        num_classes: Number of classes ``C``.
        batch_size: Batch size when ``data`` is a dataset.
        device: Where to evaluate; defaults to the model's device.

    Returns:
        ``(accuracy, support)``: ``(C,)`` float64 accuracy per class (NaN for a class with no
        test sample) and ``(C,)`` int64 number of test samples per class.

    Examples:
        >>> from torch.utils.data import TensorDataset
        >>> ds = TensorDataset(torch.eye(3), torch.tensor([0, 1, 1]))
        >>> acc, support = per_class_accuracy(nn.Identity(), ds, 3)
        >>> acc[:2].tolist(), support.tolist()
        ([1.0, 0.5], [1, 2, 0])
    """
    if device is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size)
    correct = torch.zeros(num_classes, dtype=torch.long)
    support = torch.zeros(num_classes, dtype=torch.long)
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            inputs, labels = batch[0].to(device), batch[1].to("cpu", torch.long)
            output = model(inputs)
            logits = output[1] if isinstance(output, (tuple, list)) else output
            preds = logits.argmax(dim=1).cpu()
            support += torch.bincount(labels, minlength=num_classes)
            correct += torch.bincount(labels[preds == labels], minlength=num_classes)
    finally:
        model.train(was_training)
    accuracy = correct.double() / support.double()  # 0/0 -> NaN for absent classes
    return accuracy, support


def group_accuracies(
    accuracy: Tensor, support: Tensor, groups: Mapping[str, Sequence[int]]
) -> dict[str, float]:
    """Overall top-1 and per-group accuracy from per-class accuracies.

    A group's accuracy is the sample-weighted accuracy over its classes' test samples (on a
    balanced test set this is the mean per-class accuracy). An empty group gets NaN.

    Args:
        accuracy: ``(C,)`` per-class accuracy (:func:`per_class_accuracy`).
        support: ``(C,)`` test samples per class.
        groups: Group name to class indices (:func:`shot_groups`).

    Returns:
        ``{"top1": ..., "<group>": ...}``.

    Examples:
        >>> acc = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
        >>> group_accuracies(acc, torch.tensor([2, 2, 2]), {"many": [0, 1], "few": [2]})
        {'top1': 0.5, 'many': 0.75, 'few': 0.0}
    """
    weights = support.double()
    correct = torch.nan_to_num(accuracy.double()) * weights
    out = {"top1": float(correct.sum() / weights.sum())}
    for name, classes in groups.items():
        index = torch.as_tensor(list(classes), dtype=torch.long)
        total = float(weights[index].sum()) if len(index) else 0.0
        out[name] = float(correct[index].sum()) / total if total > 0 else math.nan
    return out
