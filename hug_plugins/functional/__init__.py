"""Functional HUG: the losses, their terms and the uniformity measures as pure functions.

Everything here is a function of tensors (and a :class:`HUGConfig`), like
``torchmetrics.functional``: :func:`hug_loss` and :func:`class_mean_hug_loss` are what
:class:`~hug_plugins.HUGLoss` and :class:`~hug_plugins.ClassMeanHUGLoss` compute; the
measures (energies, separation, Gram log-determinant) are the inter terms' building blocks.

Examples:
    >>> import torch
    >>> import hug_plugins.functional as HF
    >>> proxies = torch.randn(4, 16, requires_grad=True)
    >>> terms = HF.hug_loss(torch.randn(8, 16), torch.arange(8) % 4, proxies)
    >>> terms.loss.backward()
    >>> bool(HF.hyperspherical_energy(torch.eye(3)) > 0)
    True
"""

from hug_plugins.functional.collapse import (
    class_statistics,
    collapse_metrics,
    merge_class_statistics,
    neural_collapse,
)
from hug_plugins.functional.hug import (
    class_mean_hug_loss,
    hug_loss,
    loss_dtype,
    proxies_are_static,
    static_proxy_inter,
)
from hug_plugins.functional.terms import (
    PAPER_WEIGHTS,
    HUGConfig,
    HUGTerms,
    class_means,
    inter_term,
    intra_term,
    preset_config,
)
from hug_plugins.functional.uniformity import (
    energy_rows,
    gaussian_energy,
    gaussian_gram_log_det,
    gram_log_det,
    hyperspherical_energy,
    log_energy,
    min_separation,
    pairwise_distances,
    riesz_energy,
    soft_separation,
    squared_distances,
    unit_rows,
)

__all__ = [
    "PAPER_WEIGHTS",
    "HUGConfig",
    "HUGTerms",
    "class_mean_hug_loss",
    "class_means",
    "class_statistics",
    "collapse_metrics",
    "energy_rows",
    "gaussian_energy",
    "gaussian_gram_log_det",
    "gram_log_det",
    "hug_loss",
    "hyperspherical_energy",
    "inter_term",
    "intra_term",
    "log_energy",
    "loss_dtype",
    "merge_class_statistics",
    "min_separation",
    "neural_collapse",
    "pairwise_distances",
    "preset_config",
    "proxies_are_static",
    "riesz_energy",
    "soft_separation",
    "squared_distances",
    "static_proxy_inter",
    "unit_rows",
]
