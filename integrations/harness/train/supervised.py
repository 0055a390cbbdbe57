"""Loss adapters of the training loop: an objective as ``loss_fn(model, batch)``."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from harness.objectives import Objective
from harness.train.evaluate import features_and_logits, split_batch

# --------------------------------------------------------------------------- losses


class SupervisedLoss(nn.Module):
    """Adapts an objective ``objective(features, logits, labels)`` to ``loss_fn(model, batch)``.

    The batch is ``(inputs, labels, ...)``; the model returns ``(features, logits)`` (a model
    returning only logits passes them as both, fine for objectives that ignore the features).

    Args:
        objective: E.g. :class:`harness.objectives.CrossEntropyObjective` or
            :class:`harness.objectives.HUGObjective`; if it is a module, its parameters
            (e.g. proxies outside the model) are trained too.

    Example:
        >>> import torch
        >>> from harness.objectives import CrossEntropyObjective
        >>> loss_fn = SupervisedLoss(CrossEntropyObjective())
        >>> loss_fn(nn.Linear(2, 3), (torch.randn(4, 2), torch.tensor([0, 1, 2, 0]))).ndim
        0
    """

    objective: Objective

    def __init__(self, objective: Objective) -> None:
        super().__init__()
        if not callable(objective):
            raise ValueError(f"objective must be callable, got {type(objective).__name__}")
        self.objective = objective

    def forward(self, model: nn.Module, batch: Any) -> Tensor:
        """Returns ``objective(*model(inputs), labels)`` for a batch ``(inputs, labels, ...)``."""
        inputs, labels = split_batch(batch)
        features, logits = features_and_logits(model(inputs))
        return self.objective(features, logits, labels)


class AugmentedLoss(nn.Module):
    """``loss_fn(model, batch)`` for the trainer: augments the batch inputs, then the objective.

    The augmentation runs inside the loss, on the training device, drawing from the global
    RNG that the trainer seeds and checkpoints.

    Args:
        objective: ``objective(features, logits, labels)``.
        augment: Batch augmentation (e.g. :class:`~harness.data.BatchAugment`).
    """

    def __init__(self, objective: Objective, augment: nn.Module) -> None:
        super().__init__()
        self.supervised = SupervisedLoss(objective)
        self.augment = augment

    def forward(self, model: nn.Module, batch: Any) -> Tensor:
        """Returns the objective on the augmented ``(inputs, labels)`` batch."""
        loss: Tensor = self.supervised(model, (self.augment(batch[0]), batch[1], *batch[2:]))
        return loss
