"""Naive reference implementations, kept for equivalence tests and speed baselines.

:func:`authors_hug_loss` transcribes the authors' published MHE-HUG loss as it is written:
a full ``C x C`` distance matrix, a Python loop over the classes of the batch, and no
protection against zero vectors or coincident proxies (pairs at distance exactly 0 are
dropped, so a collapse of two proxies costs nothing). Do not train with it: use
:class:`hug_plugins.HUGLoss` (``HUGLoss.preset("authors")`` is the same formula, vectorized,
chunked and safe).

Reference:
    Liu, Yu, Weller, Schölkopf. "Generalizing and Decoupling Neural Collapse via Hyperspherical
    Uniformity Gap." ICLR 2023. https://arxiv.org/abs/2303.06484

Examples:
    >>> import torch
    >>> loss = authors_hug_loss(torch.randn(8, 4), torch.arange(8) % 3, torch.randn(3, 4))
    >>> loss.ndim
    0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def authors_hug_loss(
    features: Tensor,
    labels: Tensor,
    proxies: Tensor,
    alpha: float = 0.15,
    beta: float = 0.015,
) -> Tensor:
    """The authors' MHE-HUG loss, written naively (per-class loop, full ``cdist``).

    ``alpha * mean_{i<j, d_ij > 0} ||w_hat_i - w_hat_j||^-2
    + beta * mean_{c in batch} mean_{i in A_c} ||x_hat_i - stopgrad(w_hat_c)||``.

    Args:
        features: ``(B, d)`` features.
        labels: ``(B,)`` labels.
        proxies: ``(C, d)`` proxies.
        alpha: Inter-class weight.
        beta: Intra-class weight.

    Returns:
        Scalar loss (NaN for a zero feature vector, as in the original).
    """
    w_hat = proxies / proxies.norm(dim=1, keepdim=True)
    x_hat = features / features.norm(dim=1, keepdim=True)
    dist = torch.cdist(w_hat, w_hat)
    upper = torch.triu(torch.ones_like(dist, dtype=torch.bool), diagonal=1)
    pair_dist = dist[upper & (dist > 0)]
    inter = pair_dist.pow(-2).mean()
    per_class = []
    for c in torch.unique(labels):
        members = x_hat[labels == c]
        per_class.append((members - w_hat[c].detach()).norm(dim=1).mean())
    intra = torch.stack(per_class).mean()
    return alpha * inter + beta * intra


def cross_entropy_head_loss(features: Tensor, labels: Tensor, head: torch.nn.Linear) -> Tensor:
    """The baseline every HUG speed figure is compared to: ``nn.Linear`` + cross-entropy."""
    return F.cross_entropy(head(features), labels)
