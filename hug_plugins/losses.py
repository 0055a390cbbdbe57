"""HUG losses: the Hyperspherical Uniformity Gap in proxy (P-HUG) and class-mean form.

HUG replaces cross-entropy by two decoupled terms on L2-normalized features:

* an inter-class term that makes the class proxies ``w_hat_c`` (or class means) uniform on the
  hypersphere: minimum hyperspherical energy (MHE), maximum separation (MHS) or maximum Gram
  log-determinant (MGD), see :mod:`hug_plugins.functional.uniformity`;
* an intra-class term that pulls each normalized feature ``x_hat_i`` to its class.

As a loss to minimize (``alpha`` weights the inter term, ``beta`` the intra term)::

    MHE-HUG: alpha * E_s({w_hat_c})         + beta * mean_c mean_{i in A_c} ||x_hat_i - w_hat_c||
    MHS-HUG: -alpha * softmin_sep({w_hat_c}) + beta * mean_c max_{i in A_c} ||x_hat_i - w_hat_c||
    MGD-HUG: -alpha * log det G({w_hat_c})   + beta * mean_c mean_{i in A_c} ||x_hat_i - w_hat_c||

The means run over the classes present in the batch, as in the authors' code
(``reduction="mean"``). The paper's poster writes the same losses with **sums**
(``reduction="sum"``), and its weights alpha = 0.15, beta = 0.015 (0.03 for MGD) belong to that
form::

    MHE-HUG: alpha * sum_{c != c'} K(w_hat_c, w_hat_c') + beta * sum_i ||x_hat_i - w_hat_{y_i}||
    MHS-HUG: -alpha * softmin_sep({w_hat_c})          + beta * sum_c max_{i in A_c} ||...||
    MGD-HUG: -alpha * log det G({w_hat_c})            + beta * sum_i ||x_hat_i - w_hat_{y_i}||

The two reductions differ by exact factors: with ``n`` uniformity points (``C`` proxies, or
the classes present for class means), ``B`` samples and ``m`` classes present,

* MHE inter: ``sum = n (n - 1) * mean`` (ordered pairs); for the log-mean-exp Gaussian kernel
  ``sum = mean + log(n (n - 1))`` (a log-sum-exp: same gradient);
* MHS and MGD inter: one value, not a sum over pairs: identical in both reductions;
* intra ``"distance"`` / ``"squared_distance"``: ``sum = B * sample_mean``;
  ``"max_distance"``: ``sum = m * class_mean``.

In sum form the gradient a sample receives does not shrink with the batch size, like a
summed cross-entropy. With ``ce_weight > 0`` the loss adds ``ce_weight`` times the
cross-entropy of the scaled-cosine logits ``logit_scale * <x_hat_i, w_hat_c>`` (those of
:class:`hug_plugins.proxies.ProxyHead`; mean over the batch): the hybrid form. The whole loss
is vectorized: no Python loop over classes and no host synchronisation (value checks aside,
see :func:`hug_plugins.set_validation`).

Execution: for the MHE and MHS inter terms with a distance or squared-distance pull (the
default recipe and the paper's MHE presets), :class:`HUGLoss` runs the fused node of
:mod:`hug_plugins.functional.fused` (one autograd node with a hand-written backward pass,
compiled for large pair blocks) and reads its value checks from the norms that node computes;
everything else runs the composed reference path below, which gives the same values and gradients.
Proxies that get no gradient (static proxies) skip the inter term: it is a constant, computed
once per proxy tensor version as the exact full energy, and a step costs ``O(B d)``.

Energy modes for the inter term of proxies:

* ``"full"``: the energy of all ``C`` proxies, ``O(C^2 d)`` per step (chunked: ``O(C * chunk)``
  memory). Exact; what the authors' code computes.
* ``"rows"``: the energy rows of the proxies of the classes in the batch against all proxies,
  each present class weighted once: ``O(B C d)`` per step, like a cross-entropy head. Its
  expectation over uniformly drawn classes is the full energy.
* ``"auto"`` (default): ``"full"`` when ``C <= B`` (it is the cheaper one), else ``"rows"``.

Reference:
    Liu, Yu, Weller, Schölkopf. "Generalizing and Decoupling Neural Collapse via Hyperspherical
    Uniformity Gap." ICLR 2023. https://arxiv.org/abs/2303.06484

Example:
    >>> import torch
    >>> from hug_plugins.losses import HUGLoss
    >>> loss_fn = HUGLoss.preset("mhe")
    >>> features = torch.randn(8, 16, requires_grad=True)
    >>> proxies = torch.nn.Parameter(torch.randn(4, 16))
    >>> labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    >>> loss = loss_fn(features, labels, proxies)
    >>> loss.backward()
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from hug_plugins.functional.hug import (
    class_mean_hug_loss,
    hug_loss,
    static_proxy_inter,
)
from hug_plugins.functional.terms import (
    PAPER_WEIGHTS,
    EnergyMode,
    HUGConfig,
    HUGOptions,
    HUGTerms,
    InterMeasure,
    IntraMeasure,
    IntraReduction,
    Reduction,
    class_counts,
    class_means,
    inter_from_pair_mean,
    inter_kernel,
    inter_term,
    intra_term,
    intra_weights,
    preset_config,
    resolve_config,
    resolve_energy_mode,
    weighted_terms,
    with_hug_keywords,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "PAPER_WEIGHTS",
    "ClassMeanHUGLoss",
    "EnergyMode",
    "HUGConfig",
    "HUGLoss",
    "HUGOptions",
    "HUGTerms",
    "InterMeasure",
    "IntraMeasure",
    "IntraReduction",
    "Reduction",
    "class_counts",
    "class_means",
    "inter_from_pair_mean",
    "inter_kernel",
    "inter_term",
    "intra_term",
    "intra_weights",
    "preset_config",
    "resolve_energy_mode",
    "weighted_terms",
]


class _HUGBase(nn.Module):
    """Shared configuration handling of the HUG losses."""

    last_terms: HUGTerms | None

    @with_hug_keywords()
    def __init__(
        self, config: HUGConfig | str | None = None, **overrides: Unpack[HUGOptions]
    ) -> None:
        super().__init__()
        self.config = resolve_config(config, overrides)
        self.last_terms = None
        self._static_cache: tuple[weakref.ReferenceType[Tensor], tuple[Any, ...], Tensor] | None
        self._static_cache = None

    def extra_repr(self) -> str:
        c = self.config
        text = f"inter={c.inter!r}, intra={c.intra!r}, alpha={c.alpha}, beta={c.beta}"
        if c.reduction != "mean":
            text += f", reduction={c.reduction!r}"
        if c.ce_weight > 0:
            text += f", ce_weight={c.ce_weight}, logit_scale={c.logit_scale}"
        return text


class HUGLoss(_HUGBase):
    """Proxy-based HUG loss (P-HUG): uniform proxies, features pulled to their proxy.

    ``loss = alpha * inter(w_hat) + beta * intra(x_hat, w_hat)``
    ``[+ ce_weight * CE(logit_scale * x_hat w_hat^T, y)]``, see the module docstring for the
    measures, reductions and energy modes. Features and proxies are L2-normalized inside; the
    loss is computed in float32 (float64 input stays float64) under autocast.

    Reference:
        Liu et al. "Generalizing and Decoupling Neural Collapse via Hyperspherical Uniformity
        Gap." ICLR 2023.

    Args:
        config: A :class:`HUGConfig` or a preset name (:func:`preset_config`); default
            ``HUGConfig()``, the calibrated recipe.
        **overrides: Keyword-only fields of :class:`HUGConfig` (``alpha``, ``beta``, ``inter``,
            ...) overriding ``config``; the same names in every HUG adapter.

    Raises:
        ValueError: On invalid hyperparameters.

    Example:
        >>> import torch
        >>> loss_fn = HUGLoss(alpha=0.15, beta=0.015, inter="mhe", s=2.0)
        >>> features = torch.randn(6, 8)
        >>> proxies = torch.randn(3, 8, requires_grad=True)
        >>> loss = loss_fn(features, torch.tensor([0, 0, 1, 1, 2, 2]), proxies)
        >>> loss.backward()
        >>> sorted(loss_fn.last_terms._asdict())
        ['ce', 'inter', 'intra', 'loss']
        >>> hybrid = HUGLoss.preset("mhe_sum", ce_weight=1.0)  # paper sum form + CE on the logits
        >>> float(hybrid(features, torch.tensor([0, 0, 1, 1, 2, 2]), proxies)) > 0
        True
    """

    @classmethod
    def preset(cls, name: str, **overrides: Unpack[HUGOptions]) -> HUGLoss:
        """Builds a loss from a named preset (``"mhe"``, ``"mhs"``, ``"mgd"``, ``"authors"``)."""
        return cls(name, **overrides)

    def terms(self, features: Tensor, labels: Tensor, proxies: Tensor) -> HUGTerms:
        """Computes the loss and its weighted inter and intra terms.

        Args:
            features: ``(B, d)`` features (any scale; normalized here). Zero rows are allowed.
            labels: ``(B,)`` integer labels in ``[0, C)``.
            proxies: ``(C, d)`` class proxies, ``C >= 2``.

        Returns:
            :class:`HUGTerms` of scalars.

        Raises:
            ValueError: On bad shapes, dtypes, labels out of range or non-finite values.
        """
        # Static proxies: the constant inter term comes from the cache (looked up only once the
        # batch is known to be valid).
        terms = hug_loss(features, labels, proxies, self.config, static_inter=self._static_inter)
        self.last_terms = terms.detached()
        return terms

    def _static_inter(self, proxies: Tensor, dtype: torch.dtype) -> Tensor:
        """The inter term of proxies that get no gradient: a constant, computed once.

        Cached per proxy tensor and version (an in-place update recomputes it). It is the
        exact (``"full"`` mode) value whatever ``energy_mode`` says, so a training step costs
        ``O(B d)`` whatever ``C``. The proxies' values are validated here, once per version.
        """
        key = (proxies.data_ptr(), proxies._version, dtype, proxies.device, tuple(proxies.shape))
        cached = self._static_cache
        if cached is not None and cached[0]() is proxies and cached[1] == key:
            return cached[2]
        inter = static_proxy_inter(proxies, self.config, dtype)
        self._static_cache = (weakref.ref(proxies), key, inter)
        return inter

    def forward(self, features: Tensor, labels: Tensor, proxies: Tensor) -> Tensor:
        """Returns the scalar loss; the terms are kept in ``last_terms`` (detached)."""
        return self.terms(features, labels, proxies).loss


class ClassMeanHUGLoss(_HUGBase):
    """General HUG without proxies: class means of the normalized batch features.

    ``mu_hat_c`` is the normalized mean of ``x_hat_i`` over the samples of class ``c`` in the
    batch (optionally centred by the batch mean of the class means first). The inter term is
    the uniformity of ``{mu_hat_c}`` over the classes present in the batch; the intra term
    pulls each ``x_hat_i`` to ``mu_hat_{y_i}`` (detached when ``detach_proxies``; a one-sample
    class has zero pull). Absent classes are skipped by zero weights, without indexing.

    Args:
        num_classes: Number of classes ``C`` (labels lie in ``[0, C)``).
        center: Whether to subtract the mean of the present class means before normalizing.
        config: A :class:`HUGConfig` or a preset name (:func:`preset_config`); default
            ``HUGConfig()``, the calibrated recipe.
        **overrides: Keyword-only fields of :class:`HUGConfig` (``alpha``, ``beta``, ``inter``,
            ...) overriding ``config``; the same names in every HUG adapter.

    Example:
        >>> import torch
        >>> loss_fn = ClassMeanHUGLoss(num_classes=3)
        >>> features = torch.randn(6, 8, requires_grad=True)
        >>> loss = loss_fn(features, torch.tensor([0, 0, 1, 1, 2, 2]))
        >>> loss.backward()
    """

    @with_hug_keywords()
    def __init__(
        self,
        num_classes: int,
        center: bool = False,
        config: HUGConfig | str | None = None,
        **overrides: Unpack[HUGOptions],
    ) -> None:
        if not (isinstance(num_classes, int) and num_classes >= 1):
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        super().__init__(config, **overrides)
        if self.config.ce_weight > 0:
            raise ValueError(
                "ce_weight > 0 needs class proxies (the hybrid's logits); ClassMeanHUGLoss has "
                "none: use HUGLoss with a ProxyHead"
            )
        self.num_classes = num_classes
        self.center = center

    def terms(self, features: Tensor, labels: Tensor) -> HUGTerms:
        """Computes the loss and its weighted terms (see :meth:`HUGLoss.terms`)."""
        terms = class_mean_hug_loss(
            features, labels, self.num_classes, self.config, center=self.center
        )
        self.last_terms = terms.detached()
        return terms

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """Returns the scalar loss; the terms are kept in ``last_terms`` (detached)."""
        return self.terms(features, labels).loss
