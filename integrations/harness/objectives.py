"""Supervised training objectives with one signature: ``objective(features, logits, labels)``.

A classification model used with :class:`harness.train.Trainer` returns
``(features, logits)``; an objective turns that pair and the labels into a scalar loss. This
lets the same model, loop and evaluation run cross-entropy and every HUG variant:

* :class:`CrossEntropyObjective` -- softmax cross-entropy on the logits (features unused).
* :class:`HUGObjective` -- a HUG loss on the features and the class proxies of a head
  (logits unused), e.g. ``HUGObjective(HUGLoss.preset("mhe"), head)``.
* :class:`AnnealedCEObjective` -- an objective plus a CE term annealed from 1 to 0.

All are :class:`torch.nn.Module` s, so anything trainable they hold (such as the proxies of a
head that is *not* part of the model) is found and trained by the trainer.

Example:
    >>> import torch
    >>> objective = CrossEntropyObjective()
    >>> feats, logits = torch.randn(4, 8), torch.randn(4, 3)
    >>> labels = torch.tensor([0, 1, 2, 0])
    >>> objective(feats, logits, labels).shape
    torch.Size([])
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AnnealedCEObjective",
    "CrossEntropyObjective",
    "HUGObjective",
    "Objective",
    "ProxyLoss",
]


class Objective(Protocol):
    """Anything callable as ``objective(features, logits, labels) -> scalar Tensor``."""

    def __call__(self, features: Tensor, logits: Tensor, labels: Tensor) -> Tensor: ...


class ProxyLoss(Protocol):
    """A proxy loss such as :class:`hug_plugins.losses.HUGLoss`.

    Called as ``loss(features, labels, proxies) -> scalar Tensor``.
    """

    def __call__(self, features: Tensor, labels: Tensor, proxies: Tensor) -> Tensor: ...


class CrossEntropyObjective(nn.Module):
    """Softmax cross-entropy on the logits; the features are ignored.

    The logits are cast to float32 first, so the loss is computed in full precision under
    mixed-precision autocast.

    Args:
        label_smoothing: Label smoothing in ``[0, 1)``.

    Raises:
        ValueError: If ``label_smoothing`` is outside ``[0, 1)``.

    Example:
        >>> import torch
        >>> obj = CrossEntropyObjective()
        >>> loss = obj(torch.zeros(2, 5), torch.zeros(2, 4), torch.tensor([1, 3]))
        >>> round(float(loss), 4)  # log(4)
        1.3863
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"

    def forward(self, features: Tensor, logits: Tensor, labels: Tensor) -> Tensor:
        """Returns the mean cross-entropy of ``logits`` (N, C) against ``labels`` (N,)."""
        if not isinstance(logits, Tensor) or logits.ndim != 2:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"logits must be a (N, C) tensor, got {shape}")
        if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
            shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(f"labels must be a ({logits.shape[0]},) tensor, got {shape}")
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)


class HUGObjective(nn.Module):
    """A HUG (or any proxy) loss on the features and the proxies of a classification head.

    Calls ``loss(features, labels, head.proxies)``; the logits are ignored (at test time they
    decide the prediction, e.g. the nearest proxy). ``loss`` is typically
    :class:`hug_plugins.losses.HUGLoss` and ``head`` a :class:`hug_plugins.proxies.ProxyHead`,
    but both are duck-typed: ``head`` only needs a ``proxies`` attribute, a (C, d) tensor or
    parameter.

    The head is usually part of the model (so its proxies are trained, synchronised under DDP
    and checkpointed with the model); the trainer does not train a parameter twice.

    Args:
        loss: Callable ``loss(features, labels, proxies) -> scalar Tensor``.
        head: Object with a ``proxies`` attribute of shape (C, d).

    Raises:
        ValueError: If ``loss`` is not callable or ``head`` has no (C, d) tensor ``proxies``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class Head(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.proxies = nn.Parameter(torch.randn(3, 8))
        >>> def toy_loss(features, labels, proxies):
        ...     return (features - proxies[labels]).pow(2).mean()
        >>> objective = HUGObjective(toy_loss, Head())
        >>> objective(torch.randn(4, 8), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])).ndim
        0
    """

    loss: ProxyLoss
    head: Any

    def __init__(self, loss: ProxyLoss, head: Any) -> None:
        super().__init__()
        if not callable(loss):
            raise ValueError(f"loss must be callable, got {type(loss).__name__}")
        proxies = getattr(head, "proxies", None)
        if not isinstance(proxies, Tensor):
            raise ValueError(
                f"head must have a 'proxies' tensor attribute, got {type(head).__name__} "
                f"with proxies={type(proxies).__name__}"
            )
        if proxies.ndim != 2:
            raise ValueError(f"head.proxies must have shape (C, d), got {tuple(proxies.shape)}")
        # nn.Module.__setattr__ registers modules as submodules and keeps anything else as a
        # plain attribute, so ``self.loss``/``self.head`` work for both.
        self.loss = loss
        self.head = head

    def forward(self, features: Tensor, logits: Tensor, labels: Tensor) -> Tensor:
        """Returns ``loss(features, labels, head.proxies)``; ``logits`` is unused."""
        del logits
        return self.loss(features, labels, self.head.proxies)


class AnnealedCEObjective(nn.Module):
    """An objective plus a cross-entropy term whose weight falls linearly from 1 to 0.

    ``loss = objective(features, logits, labels) + w * CE(logits, labels)`` with
    ``w = max(0, 1 - step / anneal_steps)``: training starts as the CE hybrid and ends as the
    objective alone (e.g. pure HUG). The step counter is a buffer, so it is checkpointed with
    the loss and a resumed run continues the schedule where it stopped; it advances on every
    call made with gradients enabled in training mode.

    Args:
        objective: The objective kept to the end, ``objective(features, logits, labels)``.
        anneal_steps: Optimizer steps over which the CE weight reaches 0 (>= 1).

    Raises:
        ValueError: If ``anneal_steps < 1``.

    Example:
        >>> import torch
        >>> obj = AnnealedCEObjective(CrossEntropyObjective(), anneal_steps=2)
        >>> args = torch.zeros(2, 4), torch.zeros(2, 3), torch.tensor([0, 1])
        >>> [round(float(obj(*args)), 4) for _ in range(3)]  # log 3 x (2, 1.5, 1)
        [2.1972, 1.6479, 1.0986]
    """

    steps: Tensor

    def __init__(self, objective: Objective, anneal_steps: int) -> None:
        super().__init__()
        if isinstance(anneal_steps, bool) or int(anneal_steps) < 1:
            raise ValueError(f"anneal_steps must be >= 1, got {anneal_steps!r}")
        self.objective = objective
        self.anneal_steps = int(anneal_steps)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def ce_weight(self) -> Tensor:
        """The current weight of the CE term (a 0-d tensor, no host sync)."""
        return (1.0 - self.steps.float() / self.anneal_steps).clamp(min=0.0)

    def score(self, features: Tensor, logits: Tensor, labels: Tensor) -> Tensor:
        """The loss at the current step, without advancing the schedule."""
        ce = F.cross_entropy(logits.float(), labels)
        return self.objective(features, logits, labels) + self.ce_weight() * ce

    def forward(self, features: Tensor, logits: Tensor, labels: Tensor) -> Tensor:
        """The loss at the current step; advances the step counter when training."""
        loss = self.score(features, logits, labels)
        if self.training and torch.is_grad_enabled():
            self.steps += 1
        return loss
