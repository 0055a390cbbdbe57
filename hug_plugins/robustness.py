"""Robust accuracy under L-infinity PGD (torchattacks), for cross-entropy and HUG classifiers.

Threat model and protocol (the HUG paper's, no adversarial training):

* inputs live in ``[0, 1]`` pixel space; the model normalizes internally
  (:class:`~hug_plugins.models.InputNormalize` as the first layer of a
  :class:`~hug_plugins.models.FeatureClassifier`), so the eps-ball and the ``[0, 1]`` box are
  in pixel units;
* :func:`pgd_attack`: torchattacks' ``PGD``, L-infinity, ``eps`` in ``{2, 4, 8}/255``, 20
  steps, step size ``2.5 * eps / steps``, uniform random start in the eps-ball;
* :func:`evaluate_robustness`: clean accuracy and, for every eps, robust accuracy on the *same*
  samples. A sample counts as robust when it is classified correctly both clean and under
  attack (the RobustBench/AutoAttack convention), so robust accuracy never exceeds clean
  accuracy; only clean-correct samples are attacked. ``eps = 0`` returns the clean inputs
  unchanged, so it reproduces clean accuracy exactly.

Which loss the attack ascends: torchattacks' PGD ascends the softmax cross-entropy of the
logits the model returns (:class:`LogitsOnly` strips the features of a ``(features, logits)``
model). For a cross-entropy model these are the linear-head logits. For a HUG model they are
the :class:`~hug_plugins.proxies.ProxyHead` logits ``scale * cos(x, w_c)``: the attack ascends
the cross-entropy of a cosine softmax with temperature ``1 / scale`` over the proxies, even
though the model was trained with the HUG loss (which has no softmax). The logit scale does not
change predictions, but it changes the attack's gradient direction: a small scale weights all
wrong classes alike, a large scale concentrates the gradient on the closest wrong proxy, and a
scale so large that the softmax saturates in float32 (logit gaps above ~100) would zero the
gradient and mask it (cosine logits are bounded by ``2 * scale``, so this cannot happen for
``scale < 50``; unbounded CE logits can saturate). :func:`evaluate_robustness` therefore
reports the fraction of clean-correct samples whose input gradient is exactly zero, and
``loss="margin"`` runs the same PGD on the margin loss ``max_{j != y} z_j - z_y``, whose
gradient direction does not depend on the logit scale at all. :func:`autoattack_accuracy`
(torchattacks' AutoAttack) is an optional, much stronger and slower check.

Example:
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0) and None
    >>> from hug_plugins.models import FeatureClassifier, InputNormalize
    >>> model = FeatureClassifier(
    ...     nn.Identity(), nn.Linear(4, 3), normalize=InputNormalize([0.5], [0.25]), backbone_dim=4
    ... )
    >>> x, y = torch.rand(8, 4), torch.randint(0, 3, (8,))
    >>> adv = pgd_attack(model, x, y, eps=8 / 255, seed=0)
    >>> bool((adv - x).abs().max() <= 8 / 255 + 1e-6), bool(adv.min() >= 0 and adv.max() <= 1)
    (True, True)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
import torchattacks
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from hug_plugins.models import FeatureClassifier, InputNormalize, SmallCNN, assemble_classifier
from hug_plugins.train.evaluate import model_device

__all__ = [
    "DATASET_STATS",
    "PAPER_EPS",
    "AttackLoss",
    "AugmentedTensorDataset",
    "LogitsOnly",
    "MarginPGD",
    "RobustnessResult",
    "autoattack_accuracy",
    "build_classifier",
    "checkpoint_file",
    "evaluate_robustness",
    "load_checkpoint_weights",
    "load_pixel_datasets",
    "make_pgd",
    "pgd_attack",
    "train_or_load",
]

PAPER_EPS = (2 / 255, 4 / 255, 8 / 255)
"""The L-infinity radii of the HUG paper's robustness table."""

AttackLoss = Literal["ce", "margin"]


class LogitsOnly(nn.Module):
    """Wraps a model returning logits or ``(features, logits)`` so it returns float32 logits.

    torchattacks needs a model whose output is the logits tensor.

    Example:
        >>> LogitsOnly(nn.Linear(2, 3))(torch.zeros(1, 2)).shape
        torch.Size([1, 3])
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

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


class MarginPGD(torchattacks.PGD):  # type: ignore[misc]
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

    Iterates once over the first ``max_samples`` samples of ``data`` (in order); per batch it
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
        max_samples: Evaluate only the first this many samples (``None``: all).
        seed: Seed of the random starts.
        device: Device; defaults to the model's.

    Returns:
        A :class:`RobustnessResult`.

    Example:
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
    subset: Dataset[Any] = data
    if max_samples is not None:
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1 or None, got {max_samples}")
        subset = Subset(data, range(min(int(max_samples), len(data))))  # type: ignore[arg-type]
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False)
    wrapped = LogitsOnly(model)
    was_training = model.training
    model.eval()
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
        max_samples: Use the first this many samples only.
        seed: AutoAttack's seed.
        device: Device; defaults to the model's.

    Returns:
        Robust accuracy in ``[0, 1]``.
    """
    dev = torch.device(device) if device is not None else model_device(model)
    subset: Dataset[Any] = data
    if max_samples is not None:
        subset = Subset(data, range(min(int(max_samples), len(data))))  # type: ignore[arg-type]
    wrapped = LogitsOnly(model)
    was_training = model.training
    model.eval()
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


def load_checkpoint_weights(model: nn.Module, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Loads the model weights of a :class:`hug_plugins.train.Trainer` checkpoint (or a bare
    state dict) into ``model``.

    Args:
        model: The model the checkpoint was trained with (same architecture).
        path: The checkpoint file.

    Returns:
        The checkpoint's metadata (``epoch``, ``history``, ``config``; empty for a state dict).

    Raises:
        ValueError: If the file is missing or does not fit the model.
    """
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"checkpoint {str(file)!r} does not exist")
    state = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{str(file)!r} is not a checkpoint or state dict")
    weights = state.get("model", state)
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError) as exc:
        raise ValueError(f"checkpoint {str(file)!r} does not fit the model: {exc}") from None
    return {k: v for k, v in state.items() if k in ("epoch", "history", "config")}


# --------------------------------------------------------------------------- job helpers
# Shared by integrations/robustness.py and integrations/longtail.py: data in [0, 1] pixel space,
# models with the normalization inside, and checkpointed training through the one engine.

DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...], int]] = {
    "digits": ((0.3053,), (0.3760,), 10),
    "mnist": ((0.1307,), (0.3081,), 10),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 10),
}
"""``name -> (mean, std, num_classes)`` of the pixel data the jobs use (digits: whole set)."""


class AugmentedTensorDataset(Dataset[tuple[Tensor, Tensor]]):
    """Image tensors ``(N, C, H, W)`` with CIFAR augmentation: random crop (zero padding
    ``padding``) and horizontal flip, drawn from the global torch RNG (seeded by the trainer).

    Exposes ``targets`` so :func:`hug_plugins.longtail.make_longtail` can read the labels.

    Example:
        >>> ds = AugmentedTensorDataset(torch.rand(2, 3, 8, 8), torch.tensor([0, 1]))
        >>> ds[1][0].shape, int(ds[1][1])
        (torch.Size([3, 8, 8]), 1)
    """

    def __init__(self, images: Tensor, labels: Tensor, padding: int = 4) -> None:
        self.images, self.targets, self.padding = images, labels, int(padding)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.images[index]
        p = self.padding
        if p > 0:
            h, w = image.shape[-2:]
            padded = F.pad(image, (p, p, p, p))
            i, j = (int(v) for v in torch.randint(0, 2 * p + 1, (2,)))
            image = padded[..., i : i + h, j : j + w]
        if bool(torch.rand(()) < 0.5):
            image = image.flip(-1)
        return image, self.targets[index]


def load_pixel_datasets(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    split_seed: int = 0,
    test_fraction: float = 0.25,
    augment: bool = False,
) -> tuple[Dataset[Any], Dataset[Any], tuple[int, ...]]:
    """Loads ``digits`` (embedded), ``mnist`` or ``cifar10`` as in-memory ``[0, 1]`` tensors.

    ``root`` holds ``mnist/MNIST/raw`` (torchvision layout) or ``cifar10-jpeg/{train,test}``
    (ImageFolder); nothing is downloaded. Every returned dataset exposes ``targets``.

    Args:
        name: ``"digits"``, ``"mnist"`` or ``"cifar10"``.
        root: Data root (not needed for digits).
        split_seed: Seed of the digits train/test split.
        test_fraction: Digits test share.
        augment: CIFAR augmentation (crop + flip) on the training set (cifar10 only).

    Returns:
        ``(train, test, input_shape)``.

    Example:
        >>> train, test, shape = load_pixel_datasets("digits")
        >>> shape, len(train) + len(test), float(train.tensors[0].max()) <= 1.0
        ((64,), 1797, True)
    """
    from torch.utils.data import TensorDataset

    if name == "digits":
        from hug_plugins.data import load_digits_split

        tr, te = load_digits_split(split_seed, test_fraction=test_fraction)
        for ds in (tr, te):
            ds.targets = ds.tensors[1]  # type: ignore[attr-defined]
        return tr, te, (64,)
    if name not in DATASET_STATS:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(DATASET_STATS)}")
    if root is None:
        raise ValueError(f"the {name} data set needs a data root (--data-root)")
    base = Path(root)
    tensors: list[tuple[Tensor, Tensor]] = []
    if name == "mnist":
        from torchvision.datasets import MNIST

        for train in (True, False):
            mnist = MNIST(str(base / "mnist"), train=train, download=False)
            x = mnist.data.float().div(255.0).reshape(len(mnist.data), -1)
            tensors.append((x.contiguous(), mnist.targets.long()))
        shape: tuple[int, ...] = (784,)
    else:
        import numpy as np
        from PIL import Image
        from torchvision.datasets import ImageFolder

        for split in ("train", "test"):
            folder = ImageFolder(str(base / "cifar10-jpeg" / split))
            pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p, _ in folder.samples])
            x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255.0).contiguous()
            tensors.append((x, torch.tensor(folder.targets, dtype=torch.long)))
        shape = (3, 32, 32)
    datasets: list[Dataset[Any]] = []
    for k, (x, y) in enumerate(tensors):
        if augment and k == 0 and len(shape) == 3:
            datasets.append(AugmentedTensorDataset(x, y))
        else:
            ds = TensorDataset(x, y)
            ds.targets = y  # type: ignore[attr-defined]
            datasets.append(ds)
    return datasets[0], datasets[1], shape


def _mlp(in_dim: int, hidden: int) -> nn.Sequential:
    """``flatten -> in_dim -> hidden -> hidden`` with ReLUs (the neck maps to the features)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_dim, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
    )


def build_classifier(
    method: str,
    arch: str,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    feature_dim: int = 32,
    hidden: int = 128,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    proxy_mode: str = "learnable",
    scale: float = 16.0,
    seed: int = 0,
) -> FeatureClassifier:
    """A :class:`~hug_plugins.models.FeatureClassifier` (normalization inside) with a CE or a
    HUG head.

    The backbone ends in ``hidden`` (MLP) or ``4 hidden`` (CNN) units; the classifier's linear
    neck maps them to ``feature_dim`` features.

    Args:
        method: ``"ce"`` (``nn.Linear`` head) or ``"hug"`` (:class:`~hug_plugins.proxies.
            ProxyHead`, scaled-cosine logits).
        arch: ``"mlp"`` (``in -> hidden -> hidden -> feature_dim``) or ``"cnn"``
            (:class:`~hug_plugins.models.SmallCNN`: three stages of two conv-BN-ReLU of width
            ``hidden``, ``2 hidden``, ``4 hidden``, for images).
        input_shape: Shape of one input, ``(D,)`` or ``(C, H, W)``.
        num_classes: Classes.
        feature_dim: Feature dimension.
        hidden: MLP width or CNN base width.
        mean: Per-channel input mean (``None``: no normalization).
        std: Per-channel input std.
        proxy_mode: ProxyHead mode of HUG.
        scale: ProxyHead logit scale of HUG.
        seed: Seed of the proxy initialization (weights come from the global torch RNG).

    Returns:
        The model; ``model(x)`` gives ``(features, logits)``.

    Example:
        >>> net = build_classifier("hug", "mlp", (64,), 10, mean=[0.3], std=[0.4])
        >>> [tuple(t.shape) for t in net(torch.rand(2, 64))]
        [(2, 32), (2, 10)]
    """
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")
    if method not in ("ce", "hug"):
        raise ValueError(f"method must be 'ce' or 'hug', got {method!r}")
    backbone: nn.Module
    if arch == "mlp":
        backbone, backbone_dim = _mlp(math.prod(input_shape), hidden), hidden
    elif arch == "cnn":
        if len(input_shape) != 3:
            raise ValueError(f"arch 'cnn' needs (C, H, W) inputs, got {tuple(input_shape)}")
        backbone = SmallCNN(int(input_shape[0]), width=hidden, stages=3, convs_per_stage=2)
        backbone_dim = 4 * hidden
    else:
        raise ValueError(f"arch must be 'mlp' or 'cnn', got {arch!r}")
    normalize = None if mean is None or std is None else InputNormalize(mean, std)
    return assemble_classifier(
        backbone,
        backbone_dim,
        num_classes,
        head="linear" if method == "ce" else "proxy",
        normalize=normalize,
        feature_dim=feature_dim,
        proxy_mode=proxy_mode,
        scale=scale,
        seed=seed,
    )


def train_or_load(
    model: FeatureClassifier,
    method: str,
    train_data: Dataset[Any],
    trainer_cfg: dict[str, Any],
    *,
    seed: int,
    checkpoint: str | os.PathLike[str] | None,
    hug_preset: str = "mhe",
    hug_overrides: dict[str, Any] | None = None,
    eval_only: bool = False,
) -> dict[str, float]:
    """Trains ``model`` with the engine (CE or HUG objective), resuming from ``checkpoint``.

    A finished checkpoint is simply reloaded (the trainer runs no epoch), so evaluation jobs
    reuse trained models; a killed run resumes from its last epoch.

    Args:
        model: From :func:`build_classifier`.
        method: ``"ce"`` or ``"hug"``.
        train_data: Training set.
        trainer_cfg: :class:`~hug_plugins.train.TrainerConfig` fields.
        seed: Run seed (overrides ``trainer_cfg``).
        checkpoint: Checkpoint file (``None``: no checkpoint).
        hug_preset: :class:`~hug_plugins.losses.HUGLoss` preset of the HUG method.
        hug_overrides: HUG config overrides (e.g. ``alpha``, ``beta``).
        eval_only: Never train: load ``checkpoint`` (which must exist) and return.

    Returns:
        ``{"train_loss", "epochs_trained", "train_seconds"}``.
    """
    import time

    from hug_plugins.losses import HUGLoss
    from hug_plugins.objectives import CrossEntropyObjective, HUGObjective, Objective
    from hug_plugins.train import Trainer, TrainerConfig

    if eval_only:
        if checkpoint is None:
            raise ValueError("eval_only needs a checkpoint directory")
        meta = load_checkpoint_weights(model, checkpoint)
        history = meta.get("history") or [{"loss": math.nan}]
        return {"train_loss": float(history[-1]["loss"]), "epochs_trained": 0.0}
    objective: Objective
    if method == "ce":
        objective = CrossEntropyObjective()
    else:
        loss = HUGLoss.preset(hug_preset, **(hug_overrides or {}))
        objective = HUGObjective(loss, model.head)
    config = TrainerConfig.from_mapping(
        trainer_cfg, seed=seed, checkpoint_path=None if checkpoint is None else str(checkpoint)
    )
    start = time.perf_counter()
    result = Trainer(config).fit_classifier(model, train_data, objective)
    return {
        "train_loss": float(result.final["loss"]),
        "epochs_trained": float(result.epochs - result.start_epoch),
        "train_seconds": time.perf_counter() - start,
    }


def checkpoint_file(
    directory: str | os.PathLike[str] | None,
    data: str,
    arch: str,
    method: str,
    seed: int,
    ratio: float | None = None,
) -> Path | None:
    """The checkpoint path shared by the long-tail and robustness jobs (``None`` if no dir).

    Example:
        >>> checkpoint_file("ck", "digits", "mlp", "hug", 1, ratio=0.01).name
        'digits_mlp_lt0.01_hug_seed1.pt'
        >>> checkpoint_file("ck", "digits", "mlp", "ce", 0).name
        'digits_mlp_ce_seed0.pt'
    """
    if directory is None:
        return None
    tail = "" if ratio is None or ratio == 1 else f"_lt{ratio:g}"
    return Path(directory) / f"{data}_{arch}{tail}_{method}_seed{seed}.pt"
