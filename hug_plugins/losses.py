"""HUG losses: the Hyperspherical Uniformity Gap in proxy (P-HUG) and class-mean form.

HUG replaces cross-entropy by two decoupled terms on L2-normalized features: an inter-class
term that makes the class proxies (or class means) uniform on the hypersphere (MHE energy, MHS
separation or MGD log-determinant) and an intra-class term that pulls each feature to its
class. :class:`HUGLoss` and :class:`ClassMeanHUGLoss` are thin modules over
:func:`hug_plugins.functional.hug_loss` and :func:`hug_plugins.functional.class_mean_hug_loss`;
the formulas, the two reductions and the energy modes are on the docs' math page.

Reference:
    Liu, Yu, Weller, Schölkopf. "Generalizing and Decoupling Neural Collapse via Hyperspherical
    Uniformity Gap." ICLR 2023. https://arxiv.org/abs/2303.06484

Examples:
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
from typing import TYPE_CHECKING, Any, ClassVar

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

    default_preset: ClassVar[str] = "default"
    """The preset a loss built without ``config`` starts from."""

    last_terms: HUGTerms | None

    @with_hug_keywords(default_preset)
    def __init__(
        self, config: HUGConfig | str | None = None, **overrides: Unpack[HUGOptions]
    ) -> None:
        super().__init__()
        self.config = resolve_config(config, overrides, default=self.default_preset)
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
        config: A :class:`HUGConfig` or a preset name (:func:`preset_config`); default preset
            ``"default"``, the calibrated recipe: decoupled HUG (``"pure"``, squared pull,
            alpha 60, beta 8) plus ``ce_weight = 1`` times the cross-entropy of the
            scaled-cosine logits. ``HUGLoss("pure")`` is HUG without the CE term.
        **overrides: Keyword-only fields of :class:`HUGConfig` (``alpha``, ``beta``, ``inter``,
            ...) overriding ``config``; the same names in every HUG adapter.

    Raises:
        ValueError: On invalid hyperparameters.

    Examples:
        >>> import torch
        >>> HUGLoss().config.ce_weight, HUGLoss("pure").config.ce_weight
        (1.0, 0.0)
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
        if torch.compiler.is_compiling():  # no Python cache inside a traced graph
            return static_proxy_inter(proxies, self.config, dtype)
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
        config: A :class:`HUGConfig` or a preset name (:func:`preset_config`); default preset
            ``"pure"`` (``HUGConfig()``: without proxies there are no logits for a CE term).
        **overrides: Keyword-only fields of :class:`HUGConfig` (``alpha``, ``beta``, ``inter``,
            ...) overriding ``config``; the same names in every HUG adapter.

    Examples:
        >>> import torch
        >>> loss_fn = ClassMeanHUGLoss(num_classes=3)
        >>> features = torch.randn(6, 8, requires_grad=True)
        >>> loss = loss_fn(features, torch.tensor([0, 0, 1, 1, 2, 2]))
        >>> loss.backward()
    """

    default_preset: ClassVar[str] = "pure"

    @with_hug_keywords(default_preset)
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
