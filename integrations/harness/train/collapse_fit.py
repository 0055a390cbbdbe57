"""Train a classifier while tracking its test error and neural collapse after every epoch."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from harness.models import classifier_weight
from harness.objectives import Objective
from harness.train.evaluate import evaluate_classifier, evaluate_collapse
from harness.train.runtime import is_main_process
from harness.train.supervised import AugmentedLoss, SupervisedLoss
from harness.train.trainer import Trainer

__all__ = ["fit_tracking_collapse"]


def fit_tracking_collapse(
    trainer: Trainer,
    model: nn.Module,
    objective: Objective,
    train: Dataset[Any],
    test: Dataset[Any],
    collapse: Dataset[Any],
    num_classes: int,
    *,
    augment: nn.Module | None = None,
    batch_size: int = 1000,
    progress: Sequence[str] | None = None,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Trains ``model`` with ``trainer``; each evaluation logs the test error and NC1-NC4.

    The evaluation (every ``trainer.config.eval_every`` epochs and after the last) adds
    ``test_accuracy`` / ``test_error`` on ``test`` and the collapse metrics of
    :func:`~harness.train.evaluate_collapse` on ``collapse`` (un-augmented training images),
    on the raw features and on ``x / ||x||`` (``unit_`` keys), with the classifier rows (linear
    weights or proxies) for NC3.

    Args:
        trainer: The configured trainer (checkpointing, seed, device).
        model: Returns ``(features, logits)``.
        objective: CE or HUG objective.
        train: Training set.
        test: Test set.
        collapse: Images the collapse metrics are measured on.
        num_classes: Number of classes.
        augment: Batch augmentation of the training batches (``None``: none).
        batch_size: Evaluation batch size.
        progress: History keys printed per epoch to stderr (main process; ``None``: silent).

    Returns:
        ``(final, history)``: the last history entry plus ``seconds`` and
        ``resumed_from_epoch``, and every entry.
    """
    device = trainer.device

    def eval_fn(inner: nn.Module) -> dict[str, float]:
        out = evaluate_classifier(inner, test, batch_size=batch_size, device=device, prefix="test_")
        out.update(
            evaluate_collapse(
                inner,
                collapse,
                num_classes,
                classifier_weight=classifier_weight(inner).detach(),
                batch_size=batch_size,
                device=device,
                spaces=("raw", "unit"),
            )
        )
        return out

    def log_epoch(epoch: int, entry: Mapping[str, float]) -> None:
        if progress is None or not is_main_process():
            return
        text = "  ".join(f"{k} {entry[k]:.4g}" for k in progress if k in entry)
        print(f"    epoch {epoch + 1}/{trainer.config.epochs}: {text}", file=sys.stderr, flush=True)

    loss_fn = SupervisedLoss(objective) if augment is None else AugmentedLoss(objective, augment)
    start = time.perf_counter()
    result = trainer.fit(model, train, loss_fn, eval_fn, on_epoch_end=log_epoch)
    final = dict(result.final)
    final["seconds"] = time.perf_counter() - start
    final["resumed_from_epoch"] = float(result.start_epoch)
    return final, [dict(entry) for entry in result.history]
