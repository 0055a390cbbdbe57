"""Why a loss does (not) fit its training set: per-epoch measurements of the fit.

:func:`fit_diagnostics` scores a fixed, un-augmented slice of the training set with the model
in eval mode and returns what a diagnosis of underfitting needs:

* ``train_error`` -- training error on the slice;
* ``feature_norm`` -- mean ``‖f‖`` of the features before any L2 normalization;
* ``grad_feature_correct`` / ``grad_feature_wrong`` -- mean per-sample gradient norm
  ``‖∂L/∂f_i‖`` of the objective (evaluated on training-sized batches) for the correctly
  classified and the misclassified samples, and their ratio ``grad_wrong_over_correct``: how
  much more of the gradient the samples that are still wrong receive;
* ``grad_neck`` -- norm of the objective's gradient at the weight of the neck's last linear
  layer (the last layer before the head), mean over the batches;
* ``wrong_dist_own`` / ``wrong_dist_nearest_other`` -- for the misclassified samples, mean
  distance of ``f/‖f‖`` to its own class direction and to the nearest other one (proxies of a
  :class:`~hug_plugins.proxies.ProxyHead`, normalized rows of a linear head);
* ``proxy_max_cosine`` -- the largest cosine between two class directions.

Example:
    >>> import torch
    >>> from harness.models import build_classifier
    >>> from harness.objectives import CrossEntropyObjective
    >>> from harness.data import ImageTensorDataset
    >>> model = build_classifier("mlp", 3, 1, in_features=4, feature_dim=8, width=8).eval()
    >>> data = ImageTensorDataset(torch.randint(0, 255, (20, 1, 2, 2), dtype=torch.uint8),
    ...                           torch.arange(20) % 3)
    >>> out = fit_diagnostics(model, CrossEntropyObjective(), data, batch_size=8)
    >>> 0.0 <= out["train_error"] <= 1.0 and out["grad_neck"] > 0
    True
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from harness.models import classifier_weight

__all__ = ["fit_diagnostics"]


def _mean(values: Tensor) -> float:
    return float(values.mean()) if values.numel() else float("nan")


def fit_diagnostics(
    model: nn.Module,
    objective: Any,
    data: Dataset[Any],
    *,
    batch_size: int = 128,
) -> dict[str, float]:
    """Measures the fit of ``model`` on ``data`` under ``objective`` (see the module docstring).

    Args:
        model: A :class:`~harness.models.FeatureClassifier`, in eval mode; its gradients are
            cleared afterwards.
        objective: ``objective(features, logits, labels) -> scalar``, as in training.
        data: ``(image, label)`` samples, not augmented (a fixed slice of the training set).
        batch_size: Batch size of the gradient measurement (use the training batch size:
            a mean-reduced loss spreads its gradient over the batch).

    Returns:
        The measurements, as floats (``nan`` where a group is empty).
    """
    device = next(model.parameters()).device
    loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    norms, grads, correct, own, other = [], [], [], [], []
    neck_norms: list[Tensor] = []
    linears = [m for m in model.neck.modules() if isinstance(m, nn.Linear)]
    neck_weight = linears[-1].weight if linears else None
    with torch.no_grad():
        directions = F.normalize(classifier_weight(model).detach().float(), dim=1)
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        with torch.no_grad():
            backbone_out = model.backbone_features(images)
        features = model.neck(backbone_out)
        features.retain_grad()
        logits = model.head(features)
        loss = objective(features, logits, labels)
        model.zero_grad(set_to_none=True)
        loss.backward()
        assert features.grad is not None
        grads.append(features.grad.norm(dim=1).detach())
        if isinstance(neck_weight, Tensor) and neck_weight.grad is not None:
            neck_norms.append(neck_weight.grad.norm())
        with torch.no_grad():
            unit = F.normalize(features.detach().float(), dim=1)
            dist = torch.cdist(unit, directions)  # (B, C) chordal distances on the sphere
            correct.append(logits.argmax(dim=1) == labels)
            own.append(dist.gather(1, labels[:, None]).squeeze(1))
            other.append(dist.scatter(1, labels[:, None], float("inf")).min(dim=1).values)
            norms.append(features.detach().norm(dim=1))
    model.zero_grad(set_to_none=True)
    hit = torch.cat(correct)
    grad = torch.cat(grads)
    own_d, other_d = torch.cat(own), torch.cat(other)
    with torch.no_grad():
        cos = directions @ directions.T
        cos.fill_diagonal_(-1.0)
    grad_ok, grad_bad = _mean(grad[hit]), _mean(grad[~hit])
    return {
        "train_error": 1.0 - float(hit.float().mean()),
        "feature_norm": _mean(torch.cat(norms)),
        "grad_feature_correct": grad_ok,
        "grad_feature_wrong": grad_bad,
        "grad_wrong_over_correct": grad_bad / grad_ok if grad_ok > 0 else float("nan"),
        "grad_neck": _mean(torch.stack(neck_norms)) if neck_norms else float("nan"),
        "wrong_dist_own": _mean(own_d[~hit]),
        "wrong_dist_nearest_other": _mean(other_d[~hit]),
        "proxy_max_cosine": float(cos.max()),
    }
