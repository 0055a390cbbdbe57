"""HUG losses: the Hyperspherical Uniformity Gap in proxy (P-HUG) and class-mean form.

HUG replaces cross-entropy by two decoupled terms on L2-normalized features:

* an inter-class term that makes the class proxies ``w_hat_c`` (or class means) uniform on the
  hypersphere: minimum hyperspherical energy (MHE), maximum separation (MHS) or maximum Gram
  log-determinant (MGD), see :mod:`hug_plugins.uniformity`;
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
:mod:`hug_plugins.fused` (one autograd node, no normalized copy of the proxies, compiled for
large pair blocks) and reads its value checks from the norms that node computes; everything
else runs the composed reference path below, which gives the same values and gradients.
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

import math
import weakref
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from hug_plugins._checks import (
    check_batch,
    check_deferred,
    check_matrix,
    compute_dtype,
    raise_non_finite,
    validation_enabled,
)
from hug_plugins.fused import FusedSpec, fused_proxy_hug, fused_supported
from hug_plugins.uniformity import (
    DEFAULT_EPS,
    PairKernel,
    autocast_disabled,
    gram_log_det,
    make_kernel,
    pair_kernel_mean,
    unit_rows,
)

InterMeasure = Literal["mhe", "mhs", "mgd"]
IntraMeasure = Literal["distance", "squared_distance", "max_distance"]
EnergyMode = Literal["auto", "full", "rows"]
IntraReduction = Literal["class_mean", "sample_mean"]
Reduction = Literal["mean", "sum"]

PAPER_WEIGHTS: dict[str, tuple[float, float]] = {
    "mhe": (0.15, 0.015),
    "mhs": (0.15, 0.015),
    "mgd": (0.15, 0.03),
}
"""Paper weights ``(alpha, beta)`` of the three HUG variants."""


class HUGTerms(NamedTuple):
    """The loss and its terms (already multiplied by ``alpha``, ``beta`` and ``ce_weight``).

    ``ce`` is the hybrid cross-entropy term (``None`` where a loss has none).
    """

    loss: Tensor
    inter: Tensor
    intra: Tensor
    ce: Tensor | None = None

    def detached(self) -> HUGTerms:
        """The same terms, detached from the graph (for logging)."""
        ce = None if self.ce is None else self.ce.detach()
        return HUGTerms(self.loss.detach(), self.inter.detach(), self.intra.detach(), ce)


@dataclass(frozen=True)
class HUGConfig:
    """Hyperparameters of a HUG loss.

    The defaults are the calibrated recipe that ``HUGLoss()`` and ``HUGPlugin(...)`` use:
    MHE inter term (Riesz ``s = 2`` energy of the proxies), distance pull, means over pairs and
    over the classes present (batch-size invariant; every class weighs the same, as in the
    authors' code), ``alpha = 60``, ``beta = 8``. They were chosen on
    validation splits by ``integrations/calibrate.py`` (README: "Choosing HUG's settings");
    the paper's weights 0.15 / 0.015 belong to its sum form, preset ``"mhe_sum"``.

    Attributes:
        alpha: Weight of the inter-class (uniformity) term, >= 0.
        beta: Weight of the intra-class (pull) term, >= 0.
        inter: Uniformity measure: ``"mhe"`` energy, ``"mhs"`` separation, ``"mgd"`` Gram det.
        kernel: MHE kernel: ``"riesz"`` (``s``; ``s = 0`` is log), ``"log"`` or ``"gaussian"``
            (``t``).
        s: Riesz exponent.
        t: Gaussian kernel temperature.
        separation_t: Temperature (distance units) of the smooth minimum used by MHS.
        mgd_gamma: Bandwidth of the Gaussian Gram matrix used by MGD.
        mgd_jitter: Diagonal jitter of that Gram matrix.
        intra: ``"distance"`` (authors' code), ``"squared_distance"`` or ``"max_distance"``
            (per-class maximum, the paper's MHS-HUG).
        intra_reduction: With ``reduction="mean"``: ``"class_mean"`` (mean over present
            classes of the per-class mean, as the authors' code) or ``"sample_mean"`` (mean
            over samples). Ignored with ``reduction="sum"``.
        reduction: ``"mean"`` (the authors' code: means over pairs, samples and classes) or
            ``"sum"`` (the poster's formulas: sums); see the module docstring for the factors.
        ce_weight: Weight of the hybrid cross-entropy term on the scaled-cosine logits, >= 0
            (0: pure HUG).
        logit_scale: Scale of those logits (the :class:`~hug_plugins.proxies.ProxyHead`
            default is 16), > 0.
        detach_proxies: Whether proxies get no gradient from the intra term (authors' code).
        energy_mode: ``"full"``, ``"rows"`` or ``"auto"``; see the module docstring.
        eps: Distance floor used by every distance and kernel.
        chunk_size: Rows per block of the pair sums (default: automatic).
    """

    alpha: float = 60.0
    beta: float = 8.0
    inter: InterMeasure = "mhe"
    kernel: Literal["riesz", "log", "gaussian"] = "riesz"
    s: float = 2.0
    t: float = 2.0
    separation_t: float = 0.05
    mgd_gamma: float = 1.0
    mgd_jitter: float = 1e-4
    intra: IntraMeasure = "distance"
    intra_reduction: IntraReduction = "class_mean"
    reduction: Reduction = "mean"
    ce_weight: float = 0.0
    logit_scale: float = 16.0
    detach_proxies: bool = True
    energy_mode: EnergyMode = "auto"
    eps: float = DEFAULT_EPS
    chunk_size: int | None = None

    def validate(self) -> PairKernel | None:
        """Checks every field; returns the MHE kernel (``None`` for MHS/MGD).

        Raises:
            ValueError: On any invalid value, naming the field.
        """
        for name in ("alpha", "beta", "ce_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.inter not in ("mhe", "mhs", "mgd"):
            raise ValueError(f"inter must be 'mhe', 'mhs' or 'mgd', got {self.inter!r}")
        if self.intra not in ("distance", "squared_distance", "max_distance"):
            raise ValueError(
                "intra must be 'distance', 'squared_distance' or 'max_distance', "
                f"got {self.intra!r}"
            )
        if self.intra_reduction not in ("class_mean", "sample_mean"):
            raise ValueError(
                "intra_reduction must be 'class_mean' or 'sample_mean', "
                f"got {self.intra_reduction!r}"
            )
        if self.reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {self.reduction!r}")
        if not (math.isfinite(self.logit_scale) and self.logit_scale > 0):
            raise ValueError(f"logit_scale must be > 0, got {self.logit_scale}")
        if self.energy_mode not in ("auto", "full", "rows"):
            raise ValueError(
                f"energy_mode must be 'auto', 'full' or 'rows', got {self.energy_mode!r}"
            )
        if self.inter == "mgd" and self.energy_mode == "rows":
            raise ValueError("energy_mode='rows' is not available for inter='mgd' (needs all of G)")
        if not (math.isfinite(self.separation_t) and self.separation_t > 0):
            raise ValueError(f"separation_t must be > 0, got {self.separation_t}")
        if not (math.isfinite(self.mgd_gamma) and self.mgd_gamma > 0):
            raise ValueError(f"mgd_gamma must be > 0, got {self.mgd_gamma}")
        if not (math.isfinite(self.mgd_jitter) and self.mgd_jitter > 0):
            raise ValueError(f"mgd_jitter must be > 0, got {self.mgd_jitter}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        kernel = make_kernel(self.kernel, s=self.s, t=self.t, eps=self.eps)
        return kernel if self.inter == "mhe" else None


def preset_config(name: str, **overrides: Any) -> HUGConfig:
    """The named configurations of the paper and of the authors' code.

    * ``"default"``: the calibrated default recipe, ``HUGConfig()`` (what ``HUGLoss()`` and
      ``HUGPlugin(...)`` use; see the README section "Choosing HUG's settings").
    * ``"mhe"``: MHE-HUG, Riesz ``s = 2``, alpha 0.15, beta 0.015 (the authors' mean form).
    * ``"mhs"``: MHS-HUG, smooth separation, per-class max distance, alpha 0.15, beta 0.015.
    * ``"mgd"``: MGD-HUG, Gaussian Gram log-det, alpha 0.15, beta 0.03.
    * ``"authors"``: the authors' published loss exactly: full Riesz ``s = 2`` energy, mean
      per-class distance to detached proxies.
    * ``"mhe_sum"``, ``"mhs_sum"``, ``"mgd_sum"``: the same three variants in the poster's sum
      form (``reduction="sum"``), where the paper's weights belong.

    Args:
        name: Preset name.
        **overrides: Fields of :class:`HUGConfig` to change.

    Returns:
        The configuration.

    Raises:
        ValueError: On an unknown preset or field.
    """
    paper = HUGConfig(alpha=0.15, beta=0.015, intra_reduction="class_mean", reduction="mean")
    presets = {
        "default": HUGConfig(),
        "mhe": replace(paper, inter="mhe"),
        "mhs": replace(paper, inter="mhs", intra="max_distance"),
        "mgd": replace(paper, inter="mgd", beta=0.03, energy_mode="full"),
        "authors": replace(paper, inter="mhe", kernel="riesz", s=2.0, energy_mode="full"),
    }
    for variant in ("mhe", "mhs", "mgd"):
        presets[f"{variant}_sum"] = replace(presets[variant], reduction="sum")
    if name not in presets:
        raise ValueError(f"unknown HUG preset {name!r}; available: {sorted(presets)}")
    valid = {f.name for f in fields(HUGConfig)}
    unknown = set(overrides) - valid
    if unknown:
        raise ValueError(f"unknown HUGConfig field(s) {sorted(unknown)}; valid: {sorted(valid)}")
    config = replace(presets[name], **overrides)
    config.validate()
    return config


def _class_counts(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    return torch.bincount(labels, minlength=num_classes).to(dtype)


def class_means(features: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Mean row of each class and the class counts, without a loop over classes.

    Args:
        features: ``(N, d)`` rows.
        labels: ``(N,)`` int64 class of each row, in ``[0, num_classes)``.
        num_classes: Number of classes ``C``.

    Returns:
        ``(means, counts)``: ``(C, d)`` means (zero for an absent class) and ``(C,)`` counts
        in the dtype of ``features``.
    """
    counts = torch.bincount(labels, minlength=num_classes).to(features.dtype)
    sums = features.new_zeros(num_classes, features.shape[1]).index_add(0, labels, features)
    return sums / counts.clamp_min(1.0)[:, None], counts


def _intra_weights(labels: Tensor, counts: Tensor, config: HUGConfig) -> Tensor:
    """Per-sample weights ``w_b`` with ``intra = sum_b w_b dist_b`` (distance intra forms)."""
    if config.reduction == "sum":
        return torch.ones_like(labels, dtype=counts.dtype)
    if config.intra_reduction == "sample_mean":
        return torch.full_like(labels, 1.0 / labels.shape[0], dtype=counts.dtype)
    num_present = (counts > 0).sum().clamp_min(1).to(counts.dtype)
    return (counts[labels] * num_present).reciprocal()


def intra_term(
    features: Tensor,
    targets: Tensor,
    *,
    labels: Tensor,
    counts: Tensor,
    config: HUGConfig,
) -> Tensor:
    """Intra-class pull of normalized features to their (normalized) class targets (unweighted).

    The term that :class:`HUGLoss`, :class:`ClassMeanHUGLoss` and
    :class:`~hug_plugins.ssl.HUGCriterion` share; see the module docstring for the reductions.

    Args:
        features: ``(B, d)`` normalized features.
        targets: ``(B, d)`` the class target of each sample (proxy or class mean).
        labels: ``(B,)`` labels (class slots).
        counts: ``(C,)`` samples per class in the batch.
        config: Loss configuration (``intra``, ``intra_reduction``, ``reduction``, ``eps``).
    """
    d2 = (features - targets).pow(2).sum(1)
    eps2 = config.eps * config.eps
    dist = d2 if config.intra == "squared_distance" else torch.sqrt(d2.clamp_min(eps2))
    present = (counts > 0).to(dist.dtype)
    num_present = present.sum().clamp_min(1.0)
    if config.intra == "max_distance":
        per_class = torch.zeros_like(counts).scatter_reduce(
            0, labels, dist, reduce="amax", include_self=False
        )
        if config.reduction == "sum":
            return (per_class * present).sum()
        if config.intra_reduction == "sample_mean":
            return (per_class * counts).sum() / counts.sum()
        return (per_class * present).sum() / num_present
    if config.reduction == "sum":
        return dist.sum()
    if config.intra_reduction == "sample_mean":
        return dist.mean()
    return (dist / counts[labels]).sum() / num_present


def inter_term(
    points: Tensor,
    *,
    labels: Tensor,
    counts: Tensor,
    config: HUGConfig,
    kernel: PairKernel | None,
    present: Tensor | None = None,
    unit_input: bool = False,
) -> Tensor:
    """Uniformity term of normalized class points (proxies or class means), as a loss
    (unweighted); shared by every HUG loss of the package.

    Args:
        points: ``(C, d)`` normalized points.
        labels: ``(B,)`` labels of the batch (rows mode anchors).
        counts: ``(C,)`` samples per class in the batch.
        present: Optional ``(C,)`` 0/1 weights of the points that exist (class-mean form).
        config: Loss configuration.
        kernel: MHE kernel, if ``inter == "mhe"``.
        unit_input: Whether ``points`` come straight out of :func:`unit_rows` (enables the
            cheaper backward of :func:`pair_kernel_mean`).
    """
    num_points = points.shape[0]
    mode = resolve_energy_mode(config, num_points, labels.shape[0])
    if config.inter == "mgd":
        if present is not None:
            return -_masked_gram_log_det(points, present, config)
        return -gram_log_det(
            points, gamma=config.mgd_gamma, jitter=config.mgd_jitter, normalize=False
        )
    pair_kernel = inter_kernel(config, kernel)
    if mode == "full":
        exclude = torch.arange(num_points, device=points.device)
        value = pair_kernel_mean(
            points, points, pair_kernel, exclude, present, present, config.chunk_size, unit_input
        )
    else:
        row_weights = 1.0 / counts[labels]
        value = pair_kernel_mean(
            labels, points, pair_kernel, labels, row_weights, present, config.chunk_size, unit_input
        )
    num = present.sum() if present is not None else value.new_tensor(float(num_points))
    return inter_from_pair_mean(value, num, config)


def resolve_energy_mode(config: HUGConfig, num_points: int, batch_size: int) -> str:
    """``"full"`` or ``"rows"``: the configured mode, ``"auto"`` resolved (full iff C <= B)."""
    if config.energy_mode != "auto":
        return config.energy_mode
    return "full" if num_points <= batch_size else "rows"


def inter_kernel(config: HUGConfig, kernel: PairKernel | None) -> PairKernel:
    """The pair kernel of the inter term: the MHE kernel, or MHS's smooth-minimum kernel."""
    if kernel is not None:
        return kernel
    return PairKernel("softmin", config.separation_t, config.eps)


def inter_from_pair_mean(value: Tensor, num_points: Tensor, config: HUGConfig) -> Tensor:
    """The inter term (as a loss) from the pair mean of its kernel over ``num_points`` points.

    MHS: ``-soft_separation = t * (log mean exp(-d / t) + log #pairs)``; MHE in sum form: the
    mean times the number of ordered pairs (plus its log for the log-mean-exp Gaussian kernel).
    """
    if config.inter == "mhs":
        num_pairs = (num_points * (num_points - 1) / 2).clamp_min(1.0)
        return config.separation_t * (value + torch.log(num_pairs.to(value)))
    if config.reduction == "sum":
        ordered_pairs = (num_points * (num_points - 1)).clamp_min(1.0).to(value)
        if config.kernel == "gaussian":
            return value + torch.log(ordered_pairs)
        return value * ordered_pairs
    return value


def weighted_terms(
    config: HUGConfig, inter: Tensor, intra: Tensor, ce: Tensor | None = None
) -> HUGTerms:
    """``HUGTerms`` of ``alpha * inter + beta * intra [+ ce_weight * ce]`` (each term weighted)."""
    loss = config.alpha * inter + config.beta * intra
    weighted_ce = None
    if ce is not None:
        weighted_ce = config.ce_weight * ce
        loss = loss + weighted_ce
    return HUGTerms(loss, config.alpha * inter, config.beta * intra, weighted_ce)


def _masked_gram_log_det(points: Tensor, present: Tensor, config: HUGConfig) -> Tensor:
    """``log det`` of the Gram matrix of the present points only, without indexing."""
    d2 = (2.0 - 2.0 * points @ points.T).clamp_min(0.0)
    gram = torch.exp(-config.mgd_gamma * d2)
    mask = present[:, None] * present[None, :]
    eye = torch.eye(points.shape[0], dtype=points.dtype, device=points.device)
    # Absent rows/columns become identity rows: they add log(1 + jitter) each, removed below.
    gram = gram * mask + eye * (1.0 - present)[:, None]
    gram = 0.5 * (gram + gram.T) + config.mgd_jitter * eye
    chol, _ = torch.linalg.cholesky_ex(gram)
    logdet = 2.0 * torch.log(torch.diagonal(chol)).sum()
    return logdet - (1.0 - present).sum() * math.log1p(config.mgd_jitter)


class _HUGBase(nn.Module):
    """Shared configuration handling of the HUG losses."""

    last_terms: HUGTerms | None

    def __init__(self, config: HUGConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        base = config if config is not None else HUGConfig()
        valid = {f.name for f in fields(HUGConfig)}
        unknown = set(kwargs) - valid
        if unknown:
            raise ValueError(f"unknown HUG argument(s) {sorted(unknown)}; valid: {sorted(valid)}")
        self.config = replace(base, **kwargs)
        self._kernel = self.config.validate()
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

    def _finish(self, inter: Tensor, intra: Tensor, ce: Tensor | None = None) -> HUGTerms:
        terms = weighted_terms(self.config, inter, intra, ce)
        self.last_terms = terms.detached()
        return terms


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
        config: A :class:`HUGConfig` (default: ``HUGConfig()``, the calibrated recipe).
        **kwargs: Fields of :class:`HUGConfig` overriding ``config``.

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
    def preset(cls, name: str, **overrides: Any) -> HUGLoss:
        """Builds a loss from a named preset (``"mhe"``, ``"mhs"``, ``"mgd"``, ``"authors"``)."""
        return cls(preset_config(name, **overrides))

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
        check_matrix(proxies, "proxies", values=False)
        num_classes = proxies.shape[0]
        if num_classes < 2:
            raise ValueError(f"HUG needs at least 2 proxies, got {num_classes}")
        config = self.config
        static = not proxies.requires_grad and config.ce_weight == 0
        batch = labels.shape[0] if isinstance(labels, Tensor) and labels.ndim == 1 else 0
        rows = resolve_energy_mode(config, num_classes, batch) == "rows"
        fused = not static and fused_supported(config, batch if rows else num_classes, num_classes)
        # The fused node reduces every input anyway: it checks values after computing (with
        # labels clamped into range), for O(B + C) instead of two passes over the inputs.
        deferred = fused and validation_enabled()
        check_batch(
            features, labels, num_classes, proxies, proxy_values=not static, values=not deferred
        )
        dtype = compute_dtype(features) if features.dtype == proxies.dtype else torch.float32
        with autocast_disabled(features.device.type):
            given_labels = labels
            labels = labels.long()
            if deferred:
                labels = labels.clamp(0, num_classes - 1)
            counts = _class_counts(labels, num_classes, dtype)
            if static:
                x_hat = unit_rows(features.to(dtype))
                targets = unit_rows(proxies[labels].to(dtype))
                intra = intra_term(x_hat, targets, labels=labels, counts=counts, config=config)
                return self._finish(self._static_inter(proxies, dtype), intra)
            if fused:
                anchors = labels if rows else torch.arange(num_classes, device=labels.device)
                spec = FusedSpec(
                    kernel=inter_kernel(config, self._kernel),
                    squared=config.intra == "squared_distance",
                    eps=config.eps,
                    rows=rows,
                    train_targets=not config.detach_proxies,
                )
                intra, value, norm_sums = fused_proxy_hug(
                    features.to(dtype),
                    proxies.to(dtype),
                    labels,
                    anchors,
                    counts[labels].reciprocal() if rows else counts.new_ones(num_classes),
                    _intra_weights(labels, counts, config),
                    spec,
                )
                if deferred:
                    low, high = torch.aminmax(given_labels)
                    finite = torch.isfinite(norm_sums)
                    flags = torch.stack([low >= 0, high < num_classes, finite[0], finite[1]])
                    check_deferred(flags, features, given_labels, num_classes, proxies)
                inter = inter_from_pair_mean(value, value.new_tensor(float(num_classes)), config)
                return self._finish(inter, intra)
            x_hat = unit_rows(features.to(dtype))
            w_hat = unit_rows(proxies.to(dtype))
            targets = (w_hat.detach() if config.detach_proxies else w_hat)[labels]
            intra = intra_term(x_hat, targets, labels=labels, counts=counts, config=config)
            inter = inter_term(
                w_hat,
                labels=labels,
                counts=counts,
                config=config,
                kernel=self._kernel,
                unit_input=True,
            )
            ce = None
            if config.ce_weight > 0:
                logits = config.logit_scale * (x_hat @ w_hat.T)
                ce = nn.functional.cross_entropy(logits, labels)
        return self._finish(inter, intra, ce)

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
        raise_non_finite(proxies, "proxies")
        with torch.no_grad():
            w_hat = unit_rows(proxies.to(dtype))
            empty = torch.zeros(0, dtype=torch.long, device=proxies.device)
            counts = torch.zeros(proxies.shape[0], dtype=dtype, device=proxies.device)
            full = replace(self.config, energy_mode="full")
            inter = inter_term(
                w_hat,
                labels=empty,
                counts=counts,
                config=full,
                kernel=self._kernel,
                unit_input=True,
            )
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
        config: A :class:`HUGConfig` (default: ``HUGConfig()``, the calibrated recipe).
        **kwargs: Fields of :class:`HUGConfig` overriding ``config``.

    Example:
        >>> import torch
        >>> loss_fn = ClassMeanHUGLoss(num_classes=3)
        >>> features = torch.randn(6, 8, requires_grad=True)
        >>> loss = loss_fn(features, torch.tensor([0, 0, 1, 1, 2, 2]))
        >>> loss.backward()
    """

    def __init__(
        self,
        num_classes: int,
        center: bool = False,
        config: HUGConfig | None = None,
        **kwargs: Any,
    ) -> None:
        if not (isinstance(num_classes, int) and num_classes >= 1):
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        super().__init__(config, **kwargs)
        if self.config.ce_weight > 0:
            raise ValueError(
                "ce_weight > 0 needs class proxies (the hybrid's logits); ClassMeanHUGLoss has "
                "none: use HUGLoss with a ProxyHead"
            )
        self.num_classes = num_classes
        self.center = center

    def terms(self, features: Tensor, labels: Tensor) -> HUGTerms:
        """Computes the loss and its weighted terms (see :meth:`HUGLoss.terms`)."""
        check_batch(features, labels, self.num_classes)
        dtype = compute_dtype(features)
        with autocast_disabled(features.device.type):
            x_hat = unit_rows(features.to(dtype))
            labels = labels.long()
            means, counts = class_means(x_hat, labels, self.num_classes)
            present = (counts > 0).to(dtype)
            if self.center:
                global_mean = (means * present[:, None]).sum(0) / present.sum().clamp_min(1.0)
                means = means - global_mean * present[:, None]
            mu_hat = unit_rows(means)
            targets = (mu_hat.detach() if self.config.detach_proxies else mu_hat)[labels]
            intra = intra_term(x_hat, targets, labels=labels, counts=counts, config=self.config)
            inter = inter_term(
                mu_hat, labels=labels, counts=counts, config=self.config, kernel=self._kernel,
                present=present, unit_input=True,
            )  # fmt: skip
        return self._finish(inter, intra)

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """Returns the scalar loss; the terms are kept in ``last_terms`` (detached)."""
        return self.terms(features, labels).loss
