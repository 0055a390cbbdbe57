"""Evaluation passes of the training loop: accuracy, features, neural-collapse metrics."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchmetrics import Metric

from harness.train.config import require_int
from harness.train.runtime import (
    distributed_info,
    move_to_device,
    resolve_device,
    unwrap_model,
)
from hug_plugins.utils import model_device

# --------------------------------------------------------------------------- metrics


class _AccuracyCounts(Metric):
    """Sums of correct predictions and samples; reduced over all ranks under DDP."""

    full_state_update = False
    correct: Tensor
    total: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        self.correct += (preds == target).sum()
        self.total += target.numel()

    def compute(self) -> Tensor:
        return torch.stack([self.correct, self.total])


def split_batch(batch: Any) -> tuple[Any, Tensor]:
    if isinstance(batch, (list, tuple)) and len(batch) >= 2 and isinstance(batch[1], Tensor):
        return batch[0], batch[1]
    raise ValueError(
        "a classification batch must be a (inputs, labels, ...) tuple or list with a label "
        f"tensor second, got {type(batch).__name__}"
    )


def features_and_logits(output: Any) -> tuple[Tensor, Tensor]:
    if isinstance(output, Tensor):
        return output, output
    if (
        isinstance(output, (list, tuple))
        and len(output) == 2
        and all(isinstance(t, Tensor) for t in output)
    ):
        return output[0], output[1]
    raise ValueError(
        "a classification model must return logits or a (features, logits) pair, got "
        f"{type(output).__name__}"
    )


def local_shard(data: Dataset[Any]) -> Dataset[Any]:
    """This rank's disjoint, unpadded share of ``data`` (all of it without DDP)."""
    rank, world = distributed_info()
    if world == 1:
        return data
    return Subset(data, range(rank, len(data), world))  # type: ignore[arg-type]


def _eval_loader(
    data: Dataset[Any] | DataLoader[Any], batch_size: int, num_workers: int, shard: bool
) -> DataLoader[Any]:
    if isinstance(data, DataLoader):
        return data
    if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
        raise ValueError(f"data must be a Dataset or DataLoader, got {type(data).__name__}")
    require_int("batch_size", batch_size, 1)
    require_int("num_workers", num_workers, 0)
    return DataLoader(
        local_shard(data) if shard else data,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
    )


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    data: Dataset[Any] | DataLoader[Any],
    *,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    prefix: str = "",
) -> dict[str, float]:
    """Top-1 accuracy and error of a classifier on a dataset.

    The model returns logits or ``(features, logits)``; the prediction is the arg-max of the
    logits. Counting uses a :mod:`torchmetrics` metric, so under DDP every rank gets the same
    global numbers. Given a Dataset under DDP, each rank evaluates a disjoint share of it (every
    sample exactly once); a DataLoader is used as is on every rank. The model's train/eval mode
    is restored afterwards.

    Args:
        model: The classifier (a DDP wrapper is unwrapped).
        data: A dataset or loader yielding ``(inputs, labels, ...)``.
        batch_size: Batch size when ``data`` is a dataset.
        device: Where to evaluate; defaults to the model's device.
        num_workers: DataLoader workers when ``data`` is a dataset.
        prefix: Prepended to the metric names, e.g. ``"test_"``.

    Returns:
        ``{prefix + "accuracy": a, prefix + "error": 1 - a}``.

    Raises:
        ValueError: On an empty dataset or a malformed batch/model output.

    Example:
        >>> from harness.data import make_blobs_dataset
        >>> data = make_blobs_dataset(num_classes=2, dim=2, n_per_class=4, seed=0)
        >>> model = nn.Linear(2, 2)
        >>> sorted(evaluate_classifier(model, data, prefix="val_"))
        ['val_accuracy', 'val_error']
    """
    model = unwrap_model(model)
    target_device = model_device(model) if device is None else resolve_device(device)
    loader = _eval_loader(data, batch_size, num_workers, shard=True)
    counts = _AccuracyCounts().to(target_device)
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            inputs, labels = split_batch(batch)
            _, logits = features_and_logits(model(move_to_device(inputs, target_device)))
            if logits.ndim != 2:
                raise ValueError(f"logits must have shape (N, C), got {tuple(logits.shape)}")
            counts.update(logits.argmax(dim=1), labels.to(target_device))
        with warnings.catch_warnings():
            # A rank whose share is empty never calls update(); the global sync still works.
            warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
            correct, total = counts.compute().tolist()
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluate_classifier() got an empty dataset")
    accuracy = correct / total
    return {f"{prefix}accuracy": accuracy, f"{prefix}error": 1.0 - accuracy}


@torch.no_grad()
def extract_features(
    model: nn.Module,
    data: Dataset[Any] | DataLoader[Any],
    *,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    num_workers: int = 0,
) -> tuple[Tensor, Tensor]:
    """Runs a ``(features, logits)`` model over a dataset and returns its features and labels.

    Runs locally (no sharding under DDP), in eval mode, in data order; the model's mode is
    restored afterwards. The result lives on the CPU, in float32.

    Args:
        model: Returns ``(features, logits)`` (a bare tensor is taken as the features).
        data: A dataset or loader yielding ``(inputs, labels, ...)``.
        batch_size: Batch size when ``data`` is a dataset.
        device: Where to run; defaults to the model's device.
        num_workers: DataLoader workers when ``data`` is a dataset.

    Returns:
        ``(features (N, d) float32, labels (N,))``.

    Raises:
        ValueError: On an empty dataset or a malformed batch/model output.

    Example:
        >>> from harness.data import make_blobs_dataset
        >>> data = make_blobs_dataset(num_classes=2, dim=3, n_per_class=4, seed=0)
        >>> feats, labels = extract_features(nn.Linear(3, 5), data)
        >>> tuple(feats.shape), tuple(labels.shape)
        ((8, 5), (8,))
    """
    model = unwrap_model(model)
    target_device = model_device(model) if device is None else resolve_device(device)
    loader = _eval_loader(data, batch_size, num_workers, shard=False)
    feats: list[Tensor] = []
    labels: list[Tensor] = []
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            inputs, target = split_batch(batch)
            features, _ = features_and_logits(model(move_to_device(inputs, target_device)))
            feats.append(features.detach().float().cpu())
            labels.append(target.cpu())
    finally:
        model.train(was_training)
    if not feats:
        raise ValueError("extract_features() got an empty dataset")
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def evaluate_collapse(
    model: nn.Module,
    data: Dataset[Any] | DataLoader[Any],
    num_classes: int,
    *,
    classifier_weight: Tensor | None = None,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    prefix: str = "",
    spaces: Sequence[str] = ("raw",),
) -> dict[str, float]:
    """Neural-collapse metrics (NC1-NC4, GNC2) of a ``(features, logits)`` model on a dataset.

    Two streaming passes with :class:`hug_plugins.metrics.NeuralCollapseMetrics` (NC1, NC2,
    GNC2, NC3) and :class:`hug_plugins.metrics.NCMAgreement` (NC4: how often the arg-max of the
    logits differs from the nearest-class-mean decision). Under DDP a dataset is sharded and
    the statistics are reduced over ranks, so every rank gets the same numbers.

    Args:
        model: Returns ``(features, logits)``.
        data: A dataset or loader yielding ``(inputs, labels, ...)`` (usually the train set).
        num_classes: Number of classes ``C``.
        classifier_weight: ``(C, d)`` classifier rows or proxies for NC2-w and NC3; without it
            those metrics are left out.
        batch_size: Batch size when ``data`` is a dataset.
        device: Where to run; defaults to the model's device.
        num_workers: DataLoader workers when ``data`` is a dataset.
        prefix: Prepended to the metric names.
        spaces: Which features to measure, from the same forward passes: ``"raw"`` (the
            neural-collapse literature's convention for linear heads; keys ``<prefix><name>``)
            and/or ``"unit"``, the L2-normalized features ``x / ||x||`` (the space a cosine or
            proxy head such as HUG's decides in, where the feature norm is irrelevant to NC1
            and to the nearest-class-mean rule of NC4; keys ``<prefix>unit_<name>``).

    Returns:
        Every metric of :class:`~hug_plugins.metrics.NeuralCollapseMetrics` (``nc1``,
        ``gnc2_energy``, ``gnc2_ratio``, ``nc3_dist``, ...) and of
        :class:`~hug_plugins.metrics.NCMAgreement` (``nc4_mismatch``, ...), as floats.

    Raises:
        ValueError: On an empty dataset, fewer than 2 classes present, or malformed outputs.

    Example:
        >>> from harness.data import make_blobs_dataset
        >>> data = make_blobs_dataset(num_classes=3, dim=4, n_per_class=10, seed=0)
        >>> class Net(nn.Module):
        ...     def forward(self, x):
        ...         return x, x[:, :3]
        >>> out = evaluate_collapse(Net(), data, num_classes=3)
        >>> "nc1" in out and 0.0 <= out["nc4_mismatch"] <= 1.0
        True
    """
    from hug_plugins.metrics import NCMAgreement, NeuralCollapseMetrics

    chosen = list(dict.fromkeys(spaces))
    if not chosen or any(space not in ("raw", "unit") for space in chosen):
        raise ValueError(f"spaces must be a non-empty subset of ('raw', 'unit'), got {spaces}")
    model = unwrap_model(model)
    target_device = model_device(model) if device is None else resolve_device(device)
    loader = _eval_loader(data, batch_size, num_workers, shard=True)
    weight = None if classifier_weight is None else classifier_weight.detach()
    was_training = model.training
    model.eval()
    collapse: dict[str, NeuralCollapseMetrics] = {}
    try:
        for batch in loader:
            inputs, labels = split_batch(batch)
            features, _ = features_and_logits(model(move_to_device(inputs, target_device)))
            labels = labels.to(target_device)
            for space in chosen:
                view = _collapse_space(features, space)
                if space not in collapse:
                    metric = NeuralCollapseMetrics(num_classes=num_classes, dim=view.shape[1])
                    collapse[space] = metric.to(target_device)
                    collapse[space].update(view, labels, weight)
                else:
                    collapse[space].update(view, labels)
        if not collapse:
            raise ValueError("evaluate_collapse() got an empty dataset")
        results = {s: {k: float(v) for k, v in m.compute().items()} for s, m in collapse.items()}
        agreement: dict[str, NCMAgreement] = {}
        for space, metric in collapse.items():
            with metric.sync_context():
                means, present = metric.class_means()
            agreement[space] = NCMAgreement(means, present).to(target_device)
        for batch in loader:
            inputs, labels = split_batch(batch)
            features, logits = features_and_logits(model(move_to_device(inputs, target_device)))
            labels, predictions = labels.to(target_device), logits.argmax(dim=1)
            for space in chosen:
                agreement[space].update(_collapse_space(features, space), labels, predictions)
        for space in chosen:
            results[space].update({k: float(v) for k, v in agreement[space].compute().items()})
    finally:
        model.train(was_training)
    return {
        f"{prefix}{'' if space == 'raw' else 'unit_'}{k}": v
        for space in chosen
        for k, v in results[space].items()
    }


def _collapse_space(features: Tensor, space: str) -> Tensor:
    """The features the collapse metrics see: raw, or L2-normalized rows (float32)."""
    features = features.float()
    if space == "unit":
        return torch.nn.functional.normalize(features, dim=1, eps=1e-12)
    return features
