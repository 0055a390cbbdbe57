"""Neural-collapse statistics as functions: NC1, NC2, GNC2 and NC3 from class statistics.

The sufficient statistics of a labelled feature set are ``(counts, means, within_scatter)``:
``(C,)`` class counts, ``(C, d)`` class means and the ``(d, d)`` pooled within-class scatter,
all float64. :func:`class_statistics` computes them for one batch (two-pass),
:func:`merge_class_statistics` merges two partial ones exactly (Chan, Golub and LeVeque's
parallel formula per class), :func:`collapse_metrics` turns them into the metrics, and
:func:`neural_collapse` does all three for one tensor. The formulas and the merge are on the
docs' math page; :class:`~hug_plugins.metrics.NeuralCollapseMetrics` is the streaming form.

Reference:
    Papyan, Han, Donoho. "Prevalence of neural collapse during the terminal phase of deep
    learning training." PNAS 2020. Liu et al. "Generalizing and Decoupling Neural Collapse via
    Hyperspherical Uniformity Gap." ICLR 2023.

Examples:
    >>> import torch
    >>> out = neural_collapse(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), torch.tensor([0, 1]), 2)
    >>> float(out["nc1"])
    0.0
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from hug_plugins._checks import check_labels, check_matrix
from hug_plugins.functional.kernels import KernelName
from hug_plugins.functional.uniformity import hyperspherical_energy

__all__ = [
    "COLLAPSE_KEYS",
    "ClassStatistics",
    "class_statistics",
    "collapse_metrics",
    "merge_class_statistics",
    "neural_collapse",
]

ClassStatistics = tuple[Tensor, Tensor, Tensor]
"""``(counts (C,), means (C, d), within_scatter (d, d))``, float64."""

COLLAPSE_KEYS = (
    "nc1",
    "nc2_equinorm_means",
    "nc2_equiangular_std",
    "nc2_equiangular_etf",
    "gnc2_energy",
    "gnc2_ratio",
    "nc2_equinorm_w",
    "nc3_dist",
    "nc3_cos",
)
"""Every key :func:`collapse_metrics` can return (``gnc2_ratio`` needs a reference energy,
the last three a classifier weight)."""


def class_statistics(features: Tensor, labels: Tensor, num_classes: int) -> ClassStatistics:
    """Float64 class counts, class means and within-class scatter of one batch (two-pass).

    Args:
        features: ``(B, d)`` features.
        labels: ``(B,)`` integer labels in ``[0, num_classes)``.
        num_classes: Number of classes ``C``.

    Returns:
        ``(counts, means, within_scatter)``; absent classes have count 0 and mean 0.

    Examples:
        >>> counts, means, scatter = class_statistics(torch.eye(2), torch.tensor([0, 0]), 3)
        >>> counts.tolist(), float(scatter.trace())
        ([2.0, 0.0, 0.0], 1.0)
    """
    check_matrix(features, "features")
    check_labels(labels, features.shape[0], num_classes)
    x = features.detach().to(torch.float64)
    dim = x.shape[1]
    classes, inverse = torch.unique(labels.long(), return_inverse=True)
    counts = torch.bincount(inverse, minlength=classes.shape[0]).to(torch.float64)
    # Two-pass batch statistics: class means, then a correction from the centred rows.
    means = torch.zeros(classes.shape[0], dim, dtype=x.dtype, device=x.device)
    means.index_add_(0, inverse, x).div_(counts[:, None])
    centred = x - means[inverse]
    correction = torch.zeros_like(means).index_add_(0, inverse, centred) / counts[:, None]
    means += correction
    centred -= correction[inverse]
    all_counts = torch.zeros(num_classes, dtype=x.dtype, device=x.device)
    all_means = torch.zeros(num_classes, dim, dtype=x.dtype, device=x.device)
    all_counts[classes] = counts
    all_means[classes] = means
    return all_counts, all_means, centred.T @ centred


def merge_class_statistics(first: ClassStatistics, second: ClassStatistics) -> ClassStatistics:
    """Merges two partial statistics exactly (Chan's parallel formula, per class).

    ``n = n_A + n_B``, ``mu = mu_A + (n_B / n) (mu_B - mu_A)`` and
    ``S = S_A + S_B + D^T diag(w) D`` with ``D = mu_B - mu_A``, ``w = n_A n_B / n`` over the
    classes present in both; no two large second moments are ever subtracted.

    Examples:
        >>> x, y = torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 0, 1])
        >>> merged = merge_class_statistics(
        ...     class_statistics(x[:2], y[:2], 2), class_statistics(x[2:], y[2:], 2)
        ... )
        >>> whole = class_statistics(x, y, 2)
        >>> all(torch.allclose(a, b) for a, b in zip(merged, whole))
        True
    """
    counts_a, means_a, scatter_a = first
    counts_b, means_b, scatter_b = second
    counts = counts_a + counts_b
    # Zero-count rows may hold anything (e.g. a gathered default): pin them to 0 first.
    means_a = torch.where((counts_a > 0)[:, None], means_a, 0.0)
    means_b = torch.where((counts_b > 0)[:, None], means_b, 0.0)
    delta = means_b - means_a
    share = torch.where(counts > 0, counts_b / counts.clamp_min(1.0), 0.0)
    means = means_a + share[:, None] * delta
    both = torch.nonzero((counts_a > 0) & (counts_b > 0)).squeeze(1)
    scatter = scatter_a + scatter_b
    if both.numel() > 0:
        shared = delta[both]
        weight = counts_a[both] * counts_b[both] / counts[both]
        scatter = scatter + (shared * weight[:, None]).T @ shared
    return counts, means, scatter


def collapse_metrics(
    statistics: ClassStatistics,
    classifier_weight: Tensor | None = None,
    *,
    kernel: KernelName = "riesz",
    s: float = 1.0,
    reference_energy: float | None = None,
    pinv_rtol: float = 1e-6,
    chunk_size: int = 1024,
) -> dict[str, Tensor]:
    """NC1, NC2, GNC2 and NC3 from class statistics, as float64 scalars.

    Args:
        statistics: ``(counts, means, within_scatter)``.
        classifier_weight: Optional ``(C, d)`` classifier rows or proxies (NC2 ``w``, NC3).
        kernel: GNC2 energy kernel.
        s: Riesz exponent of the GNC2 energy.
        reference_energy: Energy of an optimal configuration of the present classes; with it,
            ``gnc2_ratio`` (1.0 at GNC2) is returned.
        pinv_rtol: Relative eigenvalue cutoff of the pseudo-inverse of ``Sigma_B``.
        chunk_size: Rows per block of the pair statistics.

    Returns:
        A flat ``dict[str, Tensor]`` (keys from :data:`COLLAPSE_KEYS`). With fewer than two
        classes present it warns and every value is NaN, as torchmetrics does.

    Examples:
        >>> stats = class_statistics(torch.eye(3), torch.tensor([0, 1, 2]), 3)
        >>> round(float(collapse_metrics(stats)["nc2_equinorm_means"]), 6)
        0.0
    """
    counts_all, means_all, within_scatter = statistics
    present = counts_all > 0
    keys = list(COLLAPSE_KEYS[:5])
    if reference_energy is not None:
        keys.append("gnc2_ratio")
    if classifier_weight is not None:
        keys += ["nc2_equinorm_w", "nc3_dist", "nc3_cos"]
    if int(present.sum()) < 2:
        warnings.warn(
            "neural-collapse metrics need samples of at least 2 classes; returning NaN",
            UserWarning,
            stacklevel=2,
        )
        nan = torch.tensor(math.nan, dtype=torch.float64, device=counts_all.device)
        return {key: nan.clone() for key in keys}
    counts = counts_all[present]
    means = means_all[present]
    num = counts.sum()
    num_classes = means.shape[0]
    # mu_G = mu_1 + sum_c n_c (mu_c - mu_1) / N: no large offset enters the sum.
    global_mean = means[0] + (counts[:, None] * (means - means[0])).sum(0) / num
    centred = means - global_mean  # M~, (C, d)

    # NC1: tr(Sigma_W Sigma_B^+) / C.
    sigma_w = within_scatter / num
    sigma_b = centred.T @ centred / num_classes
    eigval, eigvec = torch.linalg.eigh(sigma_b)
    keep = eigval > pinv_rtol * eigval.max().clamp_min(1e-300)
    inv = torch.where(keep, 1.0 / eigval.clamp_min(1e-300), torch.zeros_like(eigval))
    sigma_b_pinv = (eigvec * inv[None, :]) @ eigvec.T
    nc1 = torch.trace(sigma_w @ sigma_b_pinv) / num_classes

    # NC2 on the centred means.
    out: dict[str, Tensor] = {"nc1": nc1, "nc2_equinorm_means": _cv(centred.norm(dim=1))}
    unit = F.normalize(centred, dim=1)
    out["nc2_equiangular_std"] = _pairwise_cos_std(unit)
    out["nc2_equiangular_etf"] = _mean_abs_etf_gap(unit, chunk_size)

    # GNC2: energy of the normalized centred means, and its ratio to the optimum.
    energy = hyperspherical_energy(unit, kernel=kernel, s=s, normalize=False).detach()
    out["gnc2_energy"] = energy
    if reference_energy is not None:
        out["gnc2_ratio"] = _ratio(energy, reference_energy)

    # NC2 (w) and NC3, when classifier rows are known.
    if classifier_weight is not None:
        weight = classifier_weight.to(device=centred.device, dtype=torch.float64)[present]
        out["nc2_equinorm_w"] = _cv(weight.norm(dim=1))
        out["nc3_dist"] = (weight / weight.norm() - centred / centred.norm()).norm()
        out["nc3_cos"] = F.cosine_similarity(weight, centred, dim=1).mean()
    return out


def neural_collapse(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    classifier_weight: Tensor | None = None,
    *,
    kernel: KernelName = "riesz",
    s: float = 1.0,
    reference_energy: float | None = None,
    pinv_rtol: float = 1e-6,
) -> dict[str, Tensor]:
    """The collapse metrics of one labelled feature set (see :func:`collapse_metrics`).

    Examples:
        >>> features = torch.tensor([[1.0, 0.0], [1.1, 0.0], [-1.0, 0.0], [-0.9, 0.0]])
        >>> out = neural_collapse(features, torch.tensor([0, 0, 1, 1]), 2)
        >>> round(float(out["nc1"]), 4)
        0.0013
    """
    return collapse_metrics(
        class_statistics(features, labels, num_classes),
        classifier_weight,
        kernel=kernel,
        s=s,
        reference_energy=reference_energy,
        pinv_rtol=pinv_rtol,
    )


def _ratio(energy: Tensor, reference: float) -> Tensor:
    """``energy / reference`` for positive reference energies, else ``energy - reference``
    shifted so the optimum reads 1.0 (log and negative-s energies can be <= 0)."""
    if reference > 0:
        return energy / reference
    return 1.0 + (energy - reference) / max(abs(reference), 1e-12)


def _cv(values: Tensor) -> Tensor:
    """Coefficient of variation std/mean (population std)."""
    return values.std(unbiased=False) / values.mean().clamp_min(1e-300)


def _pairwise_cos_std(unit: Tensor) -> Tensor:
    """Std of ``u_i . u_j`` over ordered pairs ``i != j`` from the ``d x d`` Gram ``U^T U``."""
    n = unit.shape[0]
    pairs = n * (n - 1)
    total = unit.sum(0)
    sum_cos = total @ total - n
    gram_d = unit.T @ unit
    sum_cos2 = (gram_d * gram_d).sum() - n
    mean = sum_cos / pairs
    var = (sum_cos2 / pairs - mean * mean).clamp_min(0.0)
    return var.sqrt()


def _mean_abs_etf_gap(unit: Tensor, chunk: int) -> Tensor:
    """Mean over pairs ``i != j`` of ``|u_i . u_j + 1/(C-1)|``, in row chunks."""
    n = unit.shape[0]
    shift = 1.0 / (n - 1)
    total = torch.zeros((), dtype=unit.dtype, device=unit.device)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        block = unit[start:stop] @ unit.T + shift
        idx = torch.arange(start, stop, device=unit.device)
        block[idx - start, idx] = 0.0
        total = total + block.abs().sum()
    return total / (n * (n - 1))
