"""Streaming neural-collapse (NC1-NC4) and generalized neural-collapse (GNC2) metrics.

Both metrics are :class:`torchmetrics.Metric` subclasses: ``update`` per batch, ``compute`` at
the end, ``reset`` between epochs; under DDP every rank gets the statistics of the union of the
shards. :class:`NCMAgreement` has plain sum states (all-reduced by torchmetrics).
:class:`NeuralCollapseMetrics` keeps float64 states -- per-class counts ``n_c`` ``(C,)``,
per-class means ``mu_c`` ``(C, d)`` and the pooled within-class scatter
``S_W = sum_i (x_i - mu_{y_i})(x_i - mu_{y_i})^T`` ``(d, d)`` -- memory ``O(C d + d^2)``, never
``C x C`` or ``C x d x d``. Classes that received no sample are left out of every statistic.

``S_W`` is never formed as "second moment minus class-mean part" (which cancels catastrophically
when the features share a large offset). Each batch is centred on its own class means
(two-pass, float64), and two partial states ``A``, ``B`` (the running state and a batch, or two
ranks) are combined with the parallel-variance formula of Chan, Golub and LeVeque applied per
class and summed over classes::

    n_c     = n_Ac + n_Bc
    mu_c    = mu_Ac + (n_Bc / n_c) (mu_Bc - mu_Ac)
    S_W     = S_WA + S_WB + D^T diag(w) D,   D_c = mu_Bc - mu_Ac,   w_c = n_Ac n_Bc / n_c

(the sum of one rank-1 matrix per class present in both parts, ``O(C d^2)`` time, no
``C x d x d`` memory). No step subtracts two large second moments -- a common offset cancels
only in ``x - mu`` and ``mu_B - mu_A`` -- so ``S_W`` is as accurate as a two-pass computation
whatever the offset. The merge is not a plain sum: under
DDP the states are all-gathered and folded rank by rank with this formula (an override of
torchmetrics' ``_sync_dist``), and ``forward``/``merge_state`` use it too (``_reduce_states``).

Notation: ``N`` samples, ``C`` classes present, ``mu_c`` class means, ``mu_G`` global mean,
``M~`` the ``(C, d)`` matrix of rows ``mu_c - mu_G``, ``mu_hat_c`` its normalized rows, ``W`` the
classifier rows (or proxies).

* ``nc1 = tr(Sigma_W Sigma_B^+) / C`` with
  ``Sigma_W = 1/N sum_i (x_i - mu_{y_i})(x_i - mu_{y_i})^T`` and
  ``Sigma_B = 1/C sum_c (mu_c - mu_G)(mu_c - mu_G)^T``; the pseudo-inverse keeps eigenvalues
  above ``pinv_rtol`` times the largest (Papyan et al. 2020, with the 1/C factor).
* ``nc2_equinorm_means`` = std/mean of ``||mu_c - mu_G||``; ``nc2_equinorm_w`` = std/mean of
  ``||w_c||``.
* ``nc2_equiangular_std`` = std over pairs ``c != c'`` of ``cos(mu_c - mu_G, mu_c' - mu_G)``
  (from the ``d x d`` matrix ``M_hat^T M_hat``); ``nc2_equiangular_etf`` = mean over pairs of
  ``|cos + 1/(C-1)|`` (0 for a simplex ETF; chunked).
* ``gnc2_energy`` = Riesz/log/Gaussian energy (mean over pairs) of ``{mu_hat_c}``;
  ``gnc2_ratio`` = ``gnc2_energy`` / energy of an energy-minimized configuration with the same
  ``C, d`` (1.0 at GNC2; only when ``C <= reference_max_classes``).
* ``nc3_dist = ||W/||W||_F - M~/||M~||_F||_F`` and ``nc3_cos`` = mean over classes of
  ``cos(w_c, mu_c - mu_G)`` (needs ``classifier_weight``).
* NC4 is :class:`NCMAgreement`: the rate at which the classifier's decision equals the
  nearest-class-mean decision ``argmin_c ||x - mu_c||`` (needs the means of a first pass).

Reference:
    Papyan, Han, Donoho. "Prevalence of neural collapse during the terminal phase of deep
    learning training." PNAS 2020. Liu et al. "Generalizing and Decoupling Neural Collapse via
    Hyperspherical Uniformity Gap." ICLR 2023.

Example:
    >>> import torch
    >>> from hug_plugins.metrics import NeuralCollapseMetrics
    >>> metric = NeuralCollapseMetrics(num_classes=3, dim=4)
    >>> metric.update(torch.randn(30, 4), torch.arange(30) % 3)
    >>> sorted(metric.compute())[:3]
    ['gnc2_energy', 'gnc2_ratio', 'nc1']
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.distributed import gather_all_tensors

from hug_plugins._checks import check_labels, check_matrix
from hug_plugins.functional.uniformity import KernelName, hyperspherical_energy


@functools.lru_cache(maxsize=64)
def reference_energy(
    num_points: int, dim: int, kernel: KernelName = "riesz", s: float = 1.0, t: float = 2.0
) -> float:
    """Energy (mean over pairs) of an energy-minimized configuration of ``C`` points in ``d``.

    For ``C <= d + 1`` this is the simplex ETF's energy (Theorem 1: the minimizer for every
    kernel convex and decreasing in the squared distance, which holds for Riesz ``s >= -2``,
    log and Gaussian); otherwise the best of two seeded runs of
    :func:`hug_plugins.proxies.minimize_energy`. Cached.
    """
    from hug_plugins.proxies import minimize_energy, simplex_etf

    if num_points <= dim + 1 and (kernel != "riesz" or s >= -2.0):
        etf = simplex_etf(num_points, dim).double()
        return float(hyperspherical_energy(etf, kernel=kernel, s=s, t=t))

    return min(
        minimize_energy(
            num_points, dim, kernel=kernel, s=s, t=t, seed=seed, max_iter=400, tol=1e-10
        ).energy
        for seed in (0, 1)
    )


class NeuralCollapseMetrics(Metric):
    """Streaming NC1, NC2, GNC2 and NC3 (see the module docstring for every formula).

    Args:
        num_classes: Number of classes ``C``.
        dim: Feature dimension ``d``.
        kernel: GNC2 energy kernel (``"riesz"``, ``"log"``, ``"gaussian"``).
        s: Riesz exponent of the GNC2 energy.
        pinv_rtol: Relative eigenvalue cutoff of the pseudo-inverse of ``Sigma_B``.
        reference_max_classes: Largest ``C`` for which ``gnc2_ratio`` is computed (the
            reference configuration costs an ``O(C^2 d)`` optimization, cached).
        chunk_size: Rows per block of the ``C x C`` pair statistics.
        **kwargs: Passed to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = NeuralCollapseMetrics(num_classes=2, dim=2)
        >>> metric.update(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), torch.tensor([0, 1]))
        >>> float(metric.compute()["nc1"])
        0.0
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    class_counts: Tensor
    class_centroids: Tensor
    within_scatter: Tensor

    def __init__(
        self,
        num_classes: int,
        dim: int,
        kernel: KernelName = "riesz",
        s: float = 1.0,
        pinv_rtol: float = 1e-6,
        reference_max_classes: int = 1024,
        chunk_size: int = 1024,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not (isinstance(num_classes, int) and num_classes >= 2):
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if not (isinstance(dim, int) and dim >= 1):
            raise ValueError(f"dim must be an int >= 1, got {dim!r}")
        if not (0 < pinv_rtol < 1):
            raise ValueError(f"pinv_rtol must be in (0, 1), got {pinv_rtol}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.num_classes = num_classes
        self.dim = dim
        self.kernel: KernelName = kernel
        self.s = s
        self.pinv_rtol = pinv_rtol
        self.reference_max_classes = reference_max_classes
        self.chunk_size = chunk_size
        self.classifier_weight: Tensor | None = None
        f64 = torch.float64
        # No torchmetrics reduction: the states are merged by _merge_states (Chan's formula) in
        # _sync_dist and _reduce_states, not summed.
        self.add_state("class_counts", torch.zeros(num_classes, dtype=f64), dist_reduce_fx=None)
        self.add_state(
            "class_centroids", torch.zeros(num_classes, dim, dtype=f64), dist_reduce_fx=None
        )
        self.add_state("within_scatter", torch.zeros(dim, dim, dtype=f64), dist_reduce_fx=None)

    def update(
        self, features: Tensor, labels: Tensor, classifier_weight: Tensor | None = None
    ) -> None:
        """Accumulates a batch.

        Args:
            features: ``(B, d)`` features (as the classifier sees them).
            labels: ``(B,)`` integer labels in ``[0, C)``.
            classifier_weight: Optional ``(C, d)`` classifier rows or proxies; the latest one
                given is used by :meth:`compute` for NC2 (``w``) and NC3.
        """
        check_matrix(features, "features", dim=self.dim)
        check_labels(labels, features.shape[0], self.num_classes)
        x = features.detach().to(torch.float64)
        classes, inverse = torch.unique(labels.long(), return_inverse=True)
        counts = torch.bincount(inverse, minlength=classes.shape[0]).to(torch.float64)
        # Two-pass batch statistics: class means, then a correction from the centred rows.
        means = torch.zeros(classes.shape[0], self.dim, dtype=x.dtype, device=x.device)
        means.index_add_(0, inverse, x).div_(counts[:, None])
        centred = x - means[inverse]
        correction = torch.zeros_like(means).index_add_(0, inverse, centred) / counts[:, None]
        means += correction
        centred -= correction[inverse]
        merged_counts, merged_means, self.within_scatter = _merge_states(
            (self.class_counts[classes], self.class_centroids[classes], self.within_scatter),
            (counts, means, centred.T @ centred),
        )
        self.class_counts[classes] = merged_counts
        self.class_centroids[classes] = merged_means
        if classifier_weight is not None:
            check_matrix(classifier_weight, "classifier_weight", dim=self.dim)
            if classifier_weight.shape[0] != self.num_classes:
                raise ValueError(
                    f"classifier_weight must have {self.num_classes} rows, "
                    f"got {classifier_weight.shape[0]}"
                )
            self.classifier_weight = classifier_weight.detach().to(torch.float64).clone()

    def class_means(self) -> tuple[Tensor, Tensor]:
        """Returns ``(means, present)``: ``(C, d)`` class means (0 for absent classes) and the
        ``(C,)`` boolean mask of classes with at least one sample (after DDP sync if inside
        ``compute``)."""
        present = self.class_counts > 0
        means = torch.where(present[:, None], self.class_centroids, 0.0)
        return means.clone(), present

    def _reduce_states(self, incoming_state: dict[str, Any]) -> None:
        """Merges ``incoming_state`` into this one with Chan's formula (``forward`` and
        ``merge_state`` call this; torchmetrics' default would stack the unreduced states)."""
        missing = [name for name in self._defaults if name not in incoming_state]
        if missing:
            raise ValueError(f"Expected state variables {missing} in the incoming state")
        (self.class_counts, self.class_centroids, self.within_scatter) = _merge_states(
            (
                incoming_state["class_counts"],
                incoming_state["class_centroids"],
                incoming_state["within_scatter"],
            ),
            (self.class_counts, self.class_centroids, self.within_scatter),
        )

    def _sync_dist(
        self,
        dist_sync_fn: Callable[..., Any] = gather_all_tensors,
        process_group: Any | None = None,
    ) -> None:
        """All-gathers the states (torchmetrics stacks them, as ``dist_reduce_fx=None``) and
        folds the ranks in order with Chan's formula, so every rank holds the same merged
        state: the one of the concatenated shards."""
        super()._sync_dist(dist_sync_fn, process_group=process_group)
        counts: Tensor = self.class_counts
        centroids: Tensor = self.class_centroids
        scatter: Tensor = self.within_scatter
        if counts.ndim == 1:  # nothing was stacked (e.g. a custom dist_sync_fn)
            return
        state = (counts[0], centroids[0], scatter[0])
        for rank in range(1, counts.shape[0]):
            state = _merge_states(state, (counts[rank], centroids[rank], scatter[rank]))
        self.class_counts, self.class_centroids, self.within_scatter = state

    def compute(self) -> dict[str, Tensor]:
        """Returns the metrics as float64 scalars (see the module docstring)."""
        present = self.class_counts > 0
        if int(present.sum()) < 2:
            raise ValueError("neural-collapse metrics need samples of at least 2 classes")
        counts = self.class_counts[present]
        means = self.class_centroids[present]
        num = counts.sum()
        num_classes = means.shape[0]
        # mu_G = mu_1 + sum_c n_c (mu_c - mu_1) / N: no large offset enters the sum.
        global_mean = means[0] + (counts[:, None] * (means - means[0])).sum(0) / num
        centred = means - global_mean  # M~, (C, d)

        # NC1: tr(Sigma_W Sigma_B^+) / C.
        sigma_w = self.within_scatter / num
        sigma_b = centred.T @ centred / num_classes
        eigval, eigvec = torch.linalg.eigh(sigma_b)
        keep = eigval > self.pinv_rtol * eigval.max().clamp_min(1e-300)
        inv = torch.where(keep, 1.0 / eigval.clamp_min(1e-300), torch.zeros_like(eigval))
        sigma_b_pinv = (eigvec * inv[None, :]) @ eigvec.T
        nc1 = torch.trace(sigma_w @ sigma_b_pinv) / num_classes

        # NC2 on the centred means.
        norms = centred.norm(dim=1)
        out: dict[str, Tensor] = {"nc1": nc1, "nc2_equinorm_means": _cv(norms)}
        unit = F.normalize(centred, dim=1)
        out["nc2_equiangular_std"] = _pairwise_cos_std(unit)
        out["nc2_equiangular_etf"] = _mean_abs_etf_gap(unit, self.chunk_size)

        # GNC2: energy of the normalized centred means, and its ratio to the optimum.
        energy = hyperspherical_energy(unit, kernel=self.kernel, s=self.s, normalize=False)
        out["gnc2_energy"] = energy.detach()
        if num_classes <= self.reference_max_classes:
            ref = reference_energy(num_classes, self.dim, self.kernel, float(self.s))
            out["gnc2_ratio"] = _ratio(energy.detach(), ref)

        # NC2 (w) and NC3, when classifier rows are known.
        if self.classifier_weight is not None:
            weight = self.classifier_weight.to(centred.device)[present]
            out["nc2_equinorm_w"] = _cv(weight.norm(dim=1))
            out["nc3_dist"] = (weight / weight.norm() - centred / centred.norm()).norm()
            out["nc3_cos"] = F.cosine_similarity(weight, centred, dim=1).mean()
        return out


_ClassStats = tuple[Tensor, Tensor, Tensor]


def _merge_states(first: _ClassStats, second: _ClassStats) -> _ClassStats:
    """Chan's parallel merge of two ``(counts, means, within_scatter)`` partial states.

    Args:
        first: ``(n_A, mu_A, S_A)``: ``(K,)`` counts, ``(K, d)`` class means (any value where
            the count is 0) and the ``(d, d)`` within-class scatter summed over the classes.
        second: ``(n_B, mu_B, S_B)``, same shapes (same ``K`` classes, in the same order).

    Returns:
        ``(n, mu, S)`` of the union: ``n = n_A + n_B``,
        ``mu = mu_A + (n_B / n) (mu_B - mu_A)`` (exactly ``mu_A`` or ``mu_B`` when the other
        count is 0, and 0 when both are) and ``S = S_A + S_B + D^T diag(w) D`` with
        ``D = mu_B - mu_A`` and ``w = n_A n_B / n`` over the classes present in both.
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


class NCMAgreement(Metric):
    """NC4: agreement between a classifier's decisions and the nearest-class-mean rule.

    ``agreement = mean_i [pred_i == argmin_c ||x_i - mu_c||]``; also reports the accuracy of
    both rules. ``class_means`` come from a first pass (e.g.
    :meth:`NeuralCollapseMetrics.class_means`); absent classes are excluded from the NCM rule
    through ``present``. ``nearest`` replaces the dense float64 rule by another exact search
    (e.g. :class:`hug_plugins.ncm.NearestMeanIndex` at large ``C``), mapping features to class
    labels in ``[0, num_classes)`` (``num_classes`` defaults to the number of means); with it,
    ``class_means`` may be ``None`` (give ``num_classes`` and ``dim``), so no dense ``(C, d)``
    copy of the means is held.

    Example:
        >>> import torch
        >>> means = torch.eye(2)
        >>> metric = NCMAgreement(means)
        >>> metric.update(torch.eye(2), torch.tensor([0, 1]), torch.tensor([0, 1]))
        >>> float(metric.compute()["nc4_agreement"])
        1.0
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    agree: Tensor
    total: Tensor
    correct_model: Tensor
    correct_ncm: Tensor

    def __init__(
        self,
        class_means: Tensor | None,
        present: Tensor | None = None,
        *,
        nearest: Callable[[Tensor], Tensor] | None = None,
        num_classes: int | None = None,
        dim: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.nearest = nearest
        self.means: Tensor | None = None
        if class_means is None:
            if nearest is None or num_classes is None or dim is None:
                raise ValueError("without class_means, give nearest, num_classes and dim")
            self.num_classes, self.dim = int(num_classes), int(dim)
        else:
            check_matrix(class_means, "class_means")
            count, self.dim = class_means.shape
            self.num_classes = count if num_classes is None else int(num_classes)
            if self.num_classes < count:
                raise ValueError(f"num_classes must be >= {count}, got {num_classes}")
            self.means = class_means.detach().to(torch.float64)
            if present is None:
                present = torch.ones(count, dtype=torch.bool)
            if present.shape != (count,):
                raise ValueError(f"present must have shape ({count},)")
            self.penalty = torch.where(present.bool(), 0.0, math.inf).to(torch.float64)
            # ||x - mu_c||^2 is expanded about the mean of the present class means (the argmin
            # is shift-invariant), so a large common offset does not swamp the class differences.
            kept = self.means[present.bool()]
            self.origin = kept.mean(0) if kept.shape[0] > 0 else torch.zeros_like(self.means[0])
        for name in ("agree", "total", "correct_model", "correct_ncm"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, features: Tensor, labels: Tensor, predictions: Tensor) -> None:
        """Accumulates a batch of features, true labels and the classifier's predictions."""
        check_matrix(features, "features", dim=self.dim)
        check_labels(labels, features.shape[0], self.num_classes)
        check_labels(predictions, features.shape[0], self.num_classes, name="predictions")
        if self.nearest is not None:
            ncm = self.nearest(features.detach()).to(predictions.device)
        else:
            assert self.means is not None  # set whenever nearest is None
            x = features.detach().to(torch.float64)
            origin = self.origin.to(x.device)
            means = self.means.to(x.device) - origin
            x = x - origin
            penalty = self.penalty.to(x.device)
            ncm = ((means * means).sum(1)[None, :] - 2.0 * x @ means.T + penalty).argmin(dim=1)
        labels, predictions = labels.to(ncm.device), predictions.to(ncm.device)
        self.agree += (ncm == predictions).sum()
        self.total += features.shape[0]
        self.correct_model += (predictions == labels).sum()
        self.correct_ncm += (ncm == labels).sum()

    def compute(self) -> dict[str, Tensor]:
        """Returns ``nc4_agreement``, ``nc4_mismatch`` (= 1 - agreement), ``model_accuracy``
        and ``ncm_accuracy``."""
        total = self.total.clamp_min(1.0)
        agreement = self.agree / total
        return {
            "nc4_agreement": agreement,
            "nc4_mismatch": 1.0 - agreement,
            "model_accuracy": self.correct_model / total,
            "ncm_accuracy": self.correct_ncm / total,
        }
