"""Streaming neural-collapse (NC1-NC4) and generalized neural-collapse (GNC2) metrics.

:class:`NeuralCollapseMetrics` (NC1, NC2 equinorm / equiangularity, GNC2, NC3) and
:class:`NCMAgreement` (NC4: agreement of the classifier with the nearest class mean) are
:class:`torchmetrics.Metric` s: ``update`` per batch, ``compute`` at the end, ``reset``
between epochs, synced under DDP. The math is in :mod:`hug_plugins.functional.collapse`;
formulas and the exact merge of the states are on the docs' math page.

Reference:
    Papyan, Han, Donoho. "Prevalence of neural collapse during the terminal phase of deep
    learning training." PNAS 2020. Liu et al. "Generalizing and Decoupling Neural Collapse via
    Hyperspherical Uniformity Gap." ICLR 2023.

Examples:
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
from torch import Tensor
from torchmetrics import Metric

from hug_plugins._checks import check_labels, check_matrix
from hug_plugins.functional.collapse import (
    class_statistics,
    collapse_metrics,
    merge_class_statistics,
)
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


def classifier_weight_of(layer: Any, num_classes: int, dim: int) -> Tensor | None:
    """The ``(C, d)`` classifier rows of a layer (a ProxyHead's ``proxies`` or a linear layer's
    ``weight``), detached; ``None`` when it has none of that shape.

    Examples:
        >>> classifier_weight_of(torch.nn.Linear(4, 3), 3, 4).shape
        torch.Size([3, 4])
    """
    weight = getattr(layer, "proxies", None)
    if weight is None:
        weight = getattr(layer, "weight", None)
    if isinstance(weight, Tensor) and tuple(weight.shape) == (num_classes, dim):
        return weight.detach()
    return None


class NeuralCollapseMetrics(Metric):
    """Streaming NC1, NC2, GNC2 and NC3, by torchmetrics' rules (``update`` / ``compute`` /
    ``reset``, DDP sync, ``forward``, ``merge_state``, ``plot``).

    The states are float64 class statistics (counts, means, within-class scatter, and the
    latest classifier weight): memory ``O(C d + d^2)``. They are merged exactly with Chan's
    formula (:func:`~hug_plugins.functional.collapse.merge_class_statistics`), not summed, so
    they are registered without a reduction and folded where torchmetrics stacks them (after a
    DDP sync or ``merge_state``), as ``PearsonCorrCoef`` does. ``compute`` returns a flat
    ``dict[str, Tensor]`` for ``log_dict``; with fewer than 2 classes seen it warns and gives
    NaN. The functional form is :func:`hug_plugins.functional.neural_collapse`.

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

    Examples:
        >>> import torch
        >>> metric = NeuralCollapseMetrics(num_classes=2, dim=2)
        >>> metric.update(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), torch.tensor([0, 1]))
        >>> float(metric.compute()["nc1"])
        0.0
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = True  # the states merge by Chan's formula, not torchmetrics' reductions

    class_counts: Tensor
    class_centroids: Tensor
    within_scatter: Tensor
    classifier_weight: Tensor
    has_classifier_weight: Tensor

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
        f64 = torch.float64
        self.add_state("class_counts", torch.zeros(num_classes, dtype=f64), dist_reduce_fx=None)
        self.add_state(
            "class_centroids", torch.zeros(num_classes, dim, dtype=f64), dist_reduce_fx=None
        )
        self.add_state("within_scatter", torch.zeros(dim, dim, dtype=f64), dist_reduce_fx=None)
        self.add_state(
            "classifier_weight", torch.zeros(num_classes, dim, dtype=f64), dist_reduce_fx=None
        )
        self.add_state("has_classifier_weight", torch.zeros((), dtype=f64), dist_reduce_fx=None)

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
        batch = class_statistics(features, labels, self.num_classes)
        if classifier_weight is not None:
            check_matrix(classifier_weight, "classifier_weight", dim=self.dim)
            if classifier_weight.shape[0] != self.num_classes:
                raise ValueError(
                    f"classifier_weight must have {self.num_classes} rows, "
                    f"got {classifier_weight.shape[0]}"
                )
        self._fold()
        self.class_counts, self.class_centroids, self.within_scatter = merge_class_statistics(
            (self.class_counts, self.class_centroids, self.within_scatter), batch
        )
        if classifier_weight is not None:
            self.classifier_weight = classifier_weight.detach().to(torch.float64).clone()
            self.has_classifier_weight = torch.ones_like(self.has_classifier_weight)

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """Merges another metric's (or a state dict's) statistics into this one, exactly.

        Raises:
            ValueError: If ``incoming_state`` lacks a state of this metric.
        """
        if isinstance(incoming_state, Metric):
            incoming_state = dict(incoming_state.metric_state)
        missing = [name for name in self._defaults if name not in incoming_state]
        if missing:
            raise ValueError(f"Expected state variables {missing} in the incoming state")
        other = NeuralCollapseMetrics(self.num_classes, self.dim)
        for name in self._defaults:
            state: Tensor = incoming_state[name]
            setattr(other, name, state.to(self.class_counts.device))
        other._fold()
        self._fold()
        self.class_counts, self.class_centroids, self.within_scatter = merge_class_statistics(
            (self.class_counts, self.class_centroids, self.within_scatter),
            (other.class_counts, other.class_centroids, other.within_scatter),
        )
        if bool(other.has_classifier_weight > 0) and not bool(self.has_classifier_weight > 0):
            self.classifier_weight = other.classifier_weight
            self.has_classifier_weight = other.has_classifier_weight

    def _fold(self) -> None:
        """Folds states that torchmetrics stacked (one row per rank or part) into one."""
        counts = self.class_counts
        if counts.ndim == 1:
            return
        centroids, scatter = self.class_centroids, self.within_scatter
        merged = (counts[0], centroids[0], scatter[0])
        for part in range(1, counts.shape[0]):
            merged = merge_class_statistics(merged, (counts[part], centroids[part], scatter[part]))
        self.class_counts, self.class_centroids, self.within_scatter = merged
        has = self.has_classifier_weight.reshape(-1)
        weights = self.classifier_weight.reshape(-1, self.num_classes, self.dim)
        latest = int(torch.nonzero(has).max()) if bool(has.any()) else 0
        self.classifier_weight = weights[latest]
        self.has_classifier_weight = has.max()

    def class_means(self) -> tuple[Tensor, Tensor]:
        """Returns ``(means, present)``: ``(C, d)`` class means (0 for absent classes) and the
        ``(C,)`` boolean mask of classes with at least one sample (after a DDP sync inside
        ``compute`` or ``sync_context``)."""
        self._fold()
        present = self.class_counts > 0
        means = torch.where(present[:, None], self.class_centroids, 0.0)
        return means.clone(), present

    def compute(self) -> dict[str, Tensor]:
        """Returns the metrics as float64 scalars, a flat dict (see the module docstring)."""
        self._fold()
        present = int((self.class_counts > 0).sum())
        reference = None
        if 2 <= present <= self.reference_max_classes:
            reference = reference_energy(present, self.dim, self.kernel, float(self.s))
        return collapse_metrics(
            (self.class_counts, self.class_centroids, self.within_scatter),
            self.classifier_weight if bool(self.has_classifier_weight > 0) else None,
            kernel=self.kernel,
            s=self.s,
            reference_energy=reference,
            pinv_rtol=self.pinv_rtol,
            chunk_size=self.chunk_size,
        )

    def plot(self, val: Any = None, ax: Any = None) -> Any:
        """Plots the metrics (one value, or a sequence of ``compute`` results) with
        torchmetrics' plotting (needs matplotlib).

        Examples:
            >>> metric = NeuralCollapseMetrics(3, 4)
            >>> metric.update(torch.randn(30, 4), torch.arange(30) % 3)
            >>> fig, ax = metric.plot()  # doctest: +SKIP
        """
        return self._plot(val, ax)


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

    Examples:
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
