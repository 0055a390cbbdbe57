"""Robust accuracy under L-infinity PGD (torchattacks), for cross-entropy and HUG classifiers.

The HUG paper's protocol, no adversarial training: inputs in ``[0, 1]`` (the model normalizes
internally), :func:`pgd_attack` is torchattacks' ``PGD`` (20 steps, step ``2.5 eps / steps``,
random start), :func:`evaluate_robustness` reports clean and robust accuracy on the same
samples (robust = correct both clean and attacked), the fraction of zero input gradients (a
gradient-masking check) and, with ``loss="margin"``, a PGD whose direction does not depend on
the logit scale; :func:`autoattack_accuracy` is torchattacks' AutoAttack. The docs' math page
explains which loss the attack ascends on a HUG model.

Examples:
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0) and None
    >>> model = nn.Linear(4, 3)  # returns logits, or (features, logits)
    >>> x, y = torch.rand(8, 4), torch.randint(0, 3, (8,))
    >>> adv = pgd_attack(model, x, y, eps=8 / 255, seed=0)
    >>> bool((adv - x).abs().max() <= 8 / 255 + 1e-6), bool(adv.min() >= 0 and adv.max() <= 1)
    (True, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from hug_plugins._extras import require_extra
from hug_plugins.utils import model_device, stratified_indices

torchattacks = require_extra("torchattacks", "robustness", "hug_plugins.robustness")

__all__ = [
    "PAPER_EPS",
    "AttackLoss",
    "LogitsOnly",
    "MarginPGD",
    "RobustnessResult",
    "attack_subset",
    "autoattack_accuracy",
    "evaluate_robustness",
    "make_pgd",
    "pgd_attack",
]

PAPER_EPS = (2 / 255, 4 / 255, 8 / 255)
"""The L-infinity radii of the HUG paper's robustness table."""

AttackLoss = Literal["ce", "margin"]


class LogitsOnly(nn.Module):
    """Wraps a model returning logits or ``(features, logits)`` so it returns float32 logits.

    torchattacks needs a model whose output is the logits tensor. The wrapper starts in the mode
    of ``model``: torchattacks restores *the wrapper's* mode after every attack (a wrapper left
    in training mode would switch a model with batch norm back to training mode mid-evaluation,
    so later batches would be classified with batch statistics and update the running ones).

    Examples:
        >>> LogitsOnly(nn.Linear(2, 3))(torch.zeros(1, 2)).shape
        torch.Size([1, 3])
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.training = model.training

    def forward(self, x: Tensor) -> Tensor:
        """Returns the logits of ``x``."""
        output = self.model(x)
        logits = output[1] if isinstance(output, (tuple, list)) else output
        if not isinstance(logits, Tensor):
            raise ValueError(f"model must return logits or (features, logits), got {type(output)}")
        return logits.float()


def _margin_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean of ``max_{j != y} z_j - z_y`` (ascended by :class:`MarginPGD`)."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), -math.inf)
    return (other.max(dim=1).values - true).mean()


_PGD: Any = torchattacks.PGD


class MarginPGD(_PGD):  # type: ignore[misc]
    """torchattacks' ``PGD`` ascending the margin loss ``max_{j != y} z_j - z_y``.

    Same random start, steps, projection and clipping as ``torchattacks.PGD``; only the loss
    differs. Its gradient direction is invariant to a positive rescaling of the logits, so it
    does not depend on a HUG head's ``scale`` (or on softmax saturation).
    """

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        """Returns adversarial images (untargeted)."""
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        adv = images.clone().detach()
        if self.random_start:
            adv = torch.clamp(adv + torch.empty_like(adv).uniform_(-self.eps, self.eps), 0, 1)
        for _ in range(self.steps):
            adv.requires_grad_(True)
            cost = _margin_loss(self.get_logits(adv), labels)
            grad = torch.autograd.grad(cost, adv)[0]
            adv = adv.detach() + self.alpha * grad.sign()
            delta = torch.clamp(adv - images, min=-self.eps, max=self.eps)
            adv = torch.clamp(images + delta, min=0, max=1).detach()
        return adv


def make_pgd(
    model: nn.Module,
    eps: float,
    *,
    steps: int = 20,
    step_factor: float = 2.5,
    random_start: bool = True,
    loss: AttackLoss = "ce",
) -> Any:
    """Builds the PGD attack of the protocol: step size ``step_factor * eps / steps``.

    Args:
        model: A model returning logits or ``(features, logits)`` on ``[0, 1]`` inputs.
        eps: L-infinity radius (>= 0).
        steps: PGD iterations (>= 1).
        step_factor: Step size as a multiple of ``eps / steps``.
        random_start: Start from a uniform point in the eps-ball.
        loss: ``"ce"`` (torchattacks.PGD, cross-entropy on the logits) or ``"margin"``
            (:class:`MarginPGD`).

    Returns:
        The torchattacks attack (call it as ``attack(images, labels)``).
    """
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if loss not in ("ce", "margin"):
        raise ValueError(f"loss must be 'ce' or 'margin', got {loss!r}")
    wrapped = model if isinstance(model, LogitsOnly) else LogitsOnly(model)
    cls = torchattacks.PGD if loss == "ce" else MarginPGD
    return cls(
        wrapped, eps=eps, alpha=step_factor * eps / steps, steps=steps, random_start=random_start
    )


def pgd_attack(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    eps: float,
    *,
    steps: int = 20,
    step_factor: float = 2.5,
    random_start: bool = True,
    loss: AttackLoss = "ce",
    seed: int | None = None,
) -> Tensor:
    """Runs L-infinity PGD on one batch; returns adversarial images in the eps-ball and ``[0, 1]``.

    The model is attacked in eval mode (its mode is restored). ``eps = 0`` returns a copy of
    ``images``. With ``seed`` the random start is reproducible and the global RNG untouched.

    Args:
        model: Returns logits or ``(features, logits)`` on ``[0, 1]`` inputs.
        images: Inputs in ``[0, 1]``.
        labels: True labels.
        eps: L-infinity radius.
        steps: Iterations.
        step_factor: Step size ``step_factor * eps / steps``.
        random_start: Uniform random start in the ball.
        loss: ``"ce"`` or ``"margin"`` (see :func:`make_pgd`).
        seed: Seed of the random start.

    Returns:
        Adversarial images, same shape and device as ``images``.

    Raises:
        ValueError: If ``images`` leave ``[0, 1]`` or an argument is invalid.
    """
    if images.numel() and (float(images.min()) < 0 or float(images.max()) > 1):
        raise ValueError("images must lie in [0, 1] (normalize inside the model)")
    attack = make_pgd(
        model, eps, steps=steps, step_factor=step_factor, random_start=random_start, loss=loss
    )
    if eps == 0:
        return images.clone()
    if seed is None:
        out: Tensor = attack(images, labels)
        return out
    devices = [images.device] if images.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        out = attack(images, labels)
    return out


@dataclass
class RobustnessResult:
    """Outcome of :func:`evaluate_robustness`.

    Attributes:
        num_samples: Samples evaluated (the same for clean and every eps).
        clean_accuracy: Clean top-1 accuracy.
        robust_accuracy: ``{eps: accuracy}``; a sample counts if correct clean and attacked.
        zero_grad_fraction: Share of clean-correct samples whose attack-loss input gradient
            is exactly zero at the clean input (gradient masking; 0 is good).
    """

    num_samples: int
    clean_accuracy: float
    robust_accuracy: dict[float, float] = field(default_factory=dict)
    zero_grad_fraction: float = 0.0

    @property
    def clean_error(self) -> float:
        """``1 - clean_accuracy``."""
        return 1.0 - self.clean_accuracy


def attack_subset(data: Dataset[Any], max_samples: int | None) -> Dataset[Any]:
    """The fixed samples an attack evaluates: all, or a class-stratified subset.

    With ``max_samples`` below the dataset size, a dataset exposing ``targets`` gives
    ``round(max_samples * share)`` samples per class, always the same ones (seed 0, original
    order), so every method and seed is attacked on the same images even when the test set is
    sorted by class; a dataset without ``targets`` gives its first ``max_samples`` samples.

    Args:
        data: The test set.
        max_samples: Subset size (>= 1), or ``None`` for all.

    Returns:
        ``data`` or a :class:`~torch.utils.data.Subset` of it.

    Examples:
        >>> from torch.utils.data import TensorDataset
        >>> ds = TensorDataset(torch.zeros(6, 1), torch.tensor([0, 0, 0, 1, 1, 1]))
        >>> ds.targets = ds.tensors[1]
        >>> sorted(int(ds[i][1]) for i in attack_subset(ds, 2).indices)
        [0, 1]
    """
    if max_samples is None:
        return data
    if max_samples < 1:
        raise ValueError(f"max_samples must be >= 1 or None, got {max_samples}")
    size = len(data)  # type: ignore[arg-type]
    if max_samples >= size:
        return data
    targets = getattr(data, "targets", None)
    if isinstance(targets, Tensor):
        index = stratified_indices(targets, int(max_samples), 0).tolist()
        return Subset(data, index)
    return Subset(data, range(int(max_samples)))


def _loss_fn(loss: AttackLoss) -> Any:
    return _margin_loss if loss == "margin" else F.cross_entropy


def evaluate_robustness(
    model: nn.Module,
    data: Dataset[Any],
    eps_list: Sequence[float] = PAPER_EPS,
    *,
    steps: int = 20,
    step_factor: float = 2.5,
    random_start: bool = True,
    loss: AttackLoss = "ce",
    batch_size: int = 256,
    max_samples: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> RobustnessResult:
    """Clean and PGD robust accuracy on the same samples.

    Iterates once over :func:`attack_subset` of ``data`` (in order); per batch it
    computes clean predictions, then attacks the clean-correct samples at every eps (seeded by
    ``(seed, batch, eps index)``). ``eps = 0`` is not attacked: its accuracy equals clean
    accuracy exactly.

    Args:
        model: Returns logits or ``(features, logits)`` on ``[0, 1]`` inputs.
        data: Dataset of ``(inputs in [0, 1], labels)``.
        eps_list: L-infinity radii.
        steps: PGD iterations.
        step_factor: Step size ``step_factor * eps / steps``.
        random_start: Random start in the ball.
        loss: Attack loss, ``"ce"`` (the protocol) or ``"margin"``.
        batch_size: Evaluation batch size.
        max_samples: Evaluate a fixed class-stratified subset of this size (``None``: all).
        seed: Seed of the random starts.
        device: Device; defaults to the model's.

    Returns:
        A :class:`RobustnessResult`.

    Examples:
        >>> from torch.utils.data import TensorDataset
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Linear(2, 2)  # returning logits, or (features, logits)
        >>> ds = TensorDataset(torch.rand(16, 2), torch.randint(0, 2, (16,)))
        >>> r = evaluate_robustness(net, ds, [0.0, 0.1], steps=3)
        >>> r.robust_accuracy[0.0] == r.clean_accuracy >= r.robust_accuracy[0.1]
        True
    """
    eps_values = [float(e) for e in eps_list]
    dev = torch.device(device) if device is not None else model_device(model)
    subset = attack_subset(data, max_samples)
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False)
    wrapped = LogitsOnly(model)
    was_training = model.training
    wrapped.eval()
    total = clean_correct = zero_grad = 0
    robust = dict.fromkeys(eps_values, 0)
    loss_fn = _loss_fn(loss)
    try:
        for b, batch in enumerate(loader):
            x, y = batch[0].to(dev), batch[1].to(dev, torch.long)
            with torch.no_grad():
                correct = wrapped(x).argmax(dim=1) == y
            total += len(y)
            n_correct = int(correct.sum())
            clean_correct += n_correct
            if n_correct == 0:
                continue
            xc, yc = x[correct], y[correct]
            probe = xc.clone().requires_grad_(True)
            grad = torch.autograd.grad(loss_fn(wrapped(probe), yc), probe)[0]
            zero_grad += int((grad.flatten(1).abs().amax(dim=1) == 0).sum())
            for k, eps in enumerate(eps_values):
                if eps == 0:
                    robust[eps] += n_correct
                    continue
                adv = pgd_attack(
                    wrapped,
                    xc,
                    yc,
                    eps,
                    steps=steps,
                    step_factor=step_factor,
                    random_start=random_start,
                    loss=loss,
                    seed=seed * 1_000_003 + b * 101 + k,
                )
                with torch.no_grad():
                    robust[eps] += int((wrapped(adv).argmax(dim=1) == yc).sum())
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("data is empty")
    return RobustnessResult(
        num_samples=total,
        clean_accuracy=clean_correct / total,
        robust_accuracy={eps: robust[eps] / total for eps in eps_values},
        zero_grad_fraction=zero_grad / clean_correct if clean_correct else 0.0,
    )


def autoattack_accuracy(
    model: nn.Module,
    data: Dataset[Any],
    eps: float,
    num_classes: int,
    *,
    version: str = "standard",
    batch_size: int = 256,
    max_samples: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> float:
    """Robust accuracy under torchattacks' AutoAttack (L-infinity), same convention as PGD.

    A stronger (and much slower) check than PGD: APGD-CE, APGD-T, FAB-T and Square for
    ``version="standard"``. Counts a sample as robust when it is correct clean and attacked.

    Args:
        model: Returns logits or ``(features, logits)`` on ``[0, 1]`` inputs.
        data: Dataset of ``(inputs, labels)``.
        eps: L-infinity radius (> 0).
        num_classes: Number of classes.
        version: ``"standard"``, ``"plus"`` or ``"rand"``.
        batch_size: Batch size.
        max_samples: Use a fixed class-stratified subset of this size (:func:`attack_subset`).
        seed: AutoAttack's seed.
        device: Device; defaults to the model's.

    Returns:
        Robust accuracy in ``[0, 1]``.
    """
    dev = torch.device(device) if device is not None else model_device(model)
    subset = attack_subset(data, max_samples)
    wrapped = LogitsOnly(model)
    was_training = model.training
    wrapped.eval()
    attack = torchattacks.AutoAttack(
        wrapped, norm="Linf", eps=eps, version=version, n_classes=num_classes, seed=seed
    )
    total = robust = 0
    try:
        for batch in DataLoader(subset, batch_size=batch_size, shuffle=False):
            x, y = batch[0].to(dev), batch[1].to(dev, torch.long)
            with torch.no_grad():
                correct = wrapped(x).argmax(dim=1) == y
            total += len(y)
            if bool(correct.any()):
                adv = attack(x[correct], y[correct])
                with torch.no_grad():
                    robust += int((wrapped(adv).argmax(dim=1) == y[correct]).sum())
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("data is empty")
    return robust / total
