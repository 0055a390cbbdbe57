"""Small helpers the adapters share: the device of a model and class-stratified sampling.

Examples:
    >>> import torch
    >>> stratified_indices(torch.tensor([0, 0, 0, 0, 1, 1]), 3, seed=0).numel()
    3
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["model_device", "stratified_indices"]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model without either.

    Examples:
        >>> model_device(torch.nn.Linear(2, 2))
        device(type='cpu')
    """
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def stratified_indices(targets: Tensor, size: int, seed: int) -> Tensor:
    """Sorted indices of ``round(size * share)`` (at least one) random samples per class.

    Args:
        targets: ``(N,)`` integer labels.
        size: The number of samples wanted in all (each class keeps its share of ``N``).
        seed: Seed of the draw (a private generator: the global RNG is untouched).

    Returns:
        A sorted ``(n,)`` long tensor of indices into ``targets``.

    Examples:
        >>> stratified_indices(torch.tensor([0, 0, 0, 0, 1, 1]), 3, seed=0).tolist()
        [0, 1, 4]
    """
    generator = torch.Generator().manual_seed(seed)
    keep: list[Tensor] = []
    n = targets.numel()
    for label in torch.unique(targets).tolist():
        index = torch.nonzero(targets == label).flatten()
        count = max(1, round(size * index.numel() / n))
        keep.append(index[torch.randperm(index.numel(), generator=generator)[:count]])
    return torch.cat(keep).sort().values
