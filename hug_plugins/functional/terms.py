"""The terms of every HUG loss: configuration, presets, and the intra / inter terms.

Pure functions of tensors and a :class:`HUGConfig`, shared by :class:`~hug_plugins.losses.HUGLoss`,
:class:`~hug_plugins.losses.ClassMeanHUGLoss`, :class:`~hug_plugins.ssl.HUGCriterion` and the
fused node of :mod:`hug_plugins.functional.fused`; see :mod:`hug_plugins.losses` for the
formulas, the two reductions and the energy modes.

Examples:
    >>> import torch
    >>> from hug_plugins.functional.terms import HUGConfig, class_means
    >>> means, counts = class_means(torch.eye(3), torch.tensor([0, 0, 1]), 2)
    >>> counts.tolist(), HUGConfig().alpha
    ([2.0, 1.0], 60.0)
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, NamedTuple, TypedDict, TypeVar

import torch
from torch import Tensor

from hug_plugins.functional.uniformity import (
    DEFAULT_EPS,
    PairKernel,
    gaussian_gram_log_det,
    gram_log_det,
    make_kernel,
    pair_kernel_mean,
    squared_distances,
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

    The defaults are the decoupled recipe, preset ``"pure"``, that ``HUGPlugin(...)`` and
    ``ClassMeanHUGLoss(...)`` use: MHE inter term (Riesz ``s = 2`` energy of the proxies),
    squared-distance pull, means over pairs and over the classes present (batch-size invariant;
    every class weighs the same, as in the authors' code), ``alpha = 60``, ``beta = 8``, no CE
    term. ``HUGLoss()`` uses preset ``"default"``: the same with ``ce_weight = 1``. Both were
    chosen on validation splits (docs: "Choosing HUG's settings"); the paper's weights
    0.15 / 0.015 belong to its sum form, preset ``"mhe_sum"``.

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
        intra: ``"squared_distance"`` (default: its pull grows with the distance and fades at
            the proxy), ``"distance"`` (authors' code and the paper presets) or
            ``"max_distance"`` (per-class maximum, the paper's MHS-HUG).
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
    intra: IntraMeasure = "squared_distance"
    intra_reduction: IntraReduction = "class_mean"
    reduction: Reduction = "mean"
    ce_weight: float = 0.0
    logit_scale: float = 16.0
    detach_proxies: bool = True
    energy_mode: EnergyMode = "auto"
    eps: float = DEFAULT_EPS
    chunk_size: int | None = None

    @functools.cached_property
    def pair_kernel(self) -> PairKernel | None:
        """The MHE kernel (``None`` for MHS/MGD), validated once per configuration."""
        return self.validate()

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


class HUGOptions(TypedDict, total=False):
    """The keyword arguments every HUG adapter takes: the fields of :class:`HUGConfig`."""

    alpha: float
    beta: float
    inter: InterMeasure
    kernel: Literal["riesz", "log", "gaussian"]
    s: float
    t: float
    separation_t: float
    mgd_gamma: float
    mgd_jitter: float
    intra: IntraMeasure
    intra_reduction: IntraReduction
    reduction: Reduction
    ce_weight: float
    logit_scale: float
    detach_proxies: bool
    energy_mode: EnergyMode
    eps: float
    chunk_size: int | None


def resolve_config(
    config: HUGConfig | str | None, overrides: Mapping[str, Any], default: str = "default"
) -> HUGConfig:
    """The configuration an adapter runs: ``config`` (or a preset name, or the ``default``
    preset) with the keyword ``overrides`` applied, validated.

    Raises:
        ValueError: On an unknown preset or field, or an invalid value.

    Examples:
        >>> resolve_config("mhe", {"beta": 0.1}).beta
        0.1
    """
    if config is None:
        config = default
    if isinstance(config, str):
        return preset_config(config, **overrides)
    if not isinstance(config, HUGConfig):
        raise ValueError(f"config must be a HUGConfig or a preset name, got {config!r}")
    valid = {f.name for f in fields(HUGConfig)}
    unknown = set(overrides) - valid
    if unknown:
        raise ValueError(f"unknown HUG argument(s) {sorted(unknown)}; valid: {sorted(valid)}")
    resolved = replace(config, **overrides)
    resolved.pair_kernel  # noqa: B018 - validates now, and caches the kernel for the losses
    return resolved


F = TypeVar("F", bound=Callable[..., Any])


def with_hug_keywords(default: str = "default") -> Callable[[F], F]:
    """Shows the :class:`HUGConfig` fields as keyword-only arguments of ``func``'s signature.

    ``func`` takes them as ``**overrides: Unpack[HUGOptions]`` (what type checkers read); this
    sets ``__signature__`` so that ``help()`` and ``inspect.signature`` list them too, with the
    ``default`` preset's values.
    """

    def decorate(func: F) -> F:
        signature = inspect.signature(func)
        params = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        base = preset_config(default)
        params += [
            inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, default=getattr(base, f.name),
                annotation=f.type,
            )
            for f in fields(HUGConfig)
        ]  # fmt: skip
        func.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        return func

    return decorate


def preset_config(name: str, **overrides: Any) -> HUGConfig:
    """The named configurations of the paper and of the authors' code.

    * ``"default"``: what ``HUGLoss()`` uses: ``"pure"`` plus the cross-entropy term on the
      scaled-cosine logits of the proxies, ``ce_weight = 1`` (the learning-speed study of the
      docs page "Choosing HUG's settings": no decoupled recipe kept up with CE on CIFAR-100).
    * ``"pure"``: decoupled HUG, ``HUGConfig()``: MHE inter term and squared-distance pull,
      alpha 60, beta 8, no CE term (what ``HUGPlugin(...)`` and ``ClassMeanHUGLoss(...)``
      use, and ``HUGLoss()`` before 0.2.0's learning-speed study ended).
    * ``"distance_pull"``: ``"pure"`` with the authors' distance pull (the default before the
      squared pull; tables made before the learning-speed study used it).
    * ``"mhe"``: MHE-HUG, Riesz ``s = 2``, alpha 0.15, beta 0.015 (the authors' mean form).
    * ``"mhs"``: MHS-HUG, smooth separation, per-class max distance, alpha 0.15, beta 0.015.
    * ``"mgd"``: MGD-HUG, Gaussian Gram log-det, alpha 0.15, beta 0.03.
    * ``"authors"``: the authors' published loss exactly: full Riesz ``s = 2`` energy, mean
      per-class distance to detached proxies.
    * ``"mhe_sum"``, ``"mhs_sum"``, ``"mgd_sum"``: the same three variants in the poster's sum
      form (``reduction="sum"``), where the paper's weights belong.
    * ``"ssl"``: what ``HUGCriterion()`` uses: instance means as classes, Riesz ``s = 2``,
      alpha 4, beta 1, the full energy of the batch.

    Args:
        name: Preset name.
        **overrides: Fields of :class:`HUGConfig` to change.

    Returns:
        The configuration.

    Raises:
        ValueError: On an unknown preset or field.
    """
    paper = HUGConfig(
        alpha=0.15, beta=0.015, intra="distance", intra_reduction="class_mean", reduction="mean"
    )
    presets = {
        "default": HUGConfig(ce_weight=1.0),
        "pure": HUGConfig(),
        "distance_pull": HUGConfig(intra="distance"),
        "mhe": replace(paper, inter="mhe"),
        "mhs": replace(paper, inter="mhs", intra="max_distance"),
        "mgd": replace(paper, inter="mgd", beta=0.03, energy_mode="full"),
        "authors": replace(paper, inter="mhe", kernel="riesz", s=2.0, energy_mode="full"),
        "ssl": HUGConfig(alpha=4.0, beta=1.0, intra="distance", energy_mode="full"),
    }
    for variant in ("mhe", "mhs", "mgd"):
        presets[f"{variant}_sum"] = replace(presets[variant], reduction="sum")
    if name not in presets:
        raise ValueError(f"unknown HUG preset {name!r}; available: {sorted(presets)}")
    valid = {f.name for f in fields(HUGConfig)}
    unknown = set(overrides) - valid
    if unknown:
        raise ValueError(f"unknown HUG argument(s) {sorted(unknown)}; valid: {sorted(valid)}")
    config = replace(presets[name], **overrides)
    config.pair_kernel  # noqa: B018 - validates now, and caches the kernel for the losses
    return config


def class_counts(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """``(C,)`` samples per class, in ``dtype``: a static shape (``torch.compile`` traces it,
    where ``bincount``'s data-dependent length breaks the graph).

    Examples:
        >>> class_counts(torch.tensor([0, 2, 2]), 4, torch.float32).tolist()
        [1.0, 0.0, 2.0, 0.0]
    """
    ones = torch.ones(labels.shape, dtype=dtype, device=labels.device)
    return torch.zeros(num_classes, dtype=dtype, device=labels.device).index_add_(0, labels, ones)


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
    counts = class_counts(labels, num_classes, features.dtype)
    sums = features.new_zeros(num_classes, features.shape[1]).index_add(0, labels, features)
    return sums / counts.clamp_min(1.0)[:, None], counts


def intra_weights(labels: Tensor, counts: Tensor, config: HUGConfig) -> Tensor:
    """Per-sample weights ``w_b`` with ``intra = sum_b w_b dist_b`` (distance intra forms)."""
    if config.reduction == "sum":
        return torch.ones_like(labels, dtype=counts.dtype)
    if config.intra_reduction == "sample_mean":
        return torch.full_like(labels, 1.0 / labels.shape[0], dtype=counts.dtype)
    num_present = torch.count_nonzero(counts).clamp_min(1)
    return (counts.index_select(0, labels) * num_present).reciprocal()


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
            return -gaussian_gram_log_det(
                squared_distances(points, points, unit=True),
                config.mgd_gamma,
                config.mgd_jitter,
                present,
            )
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


def inter_from_pair_mean(value: Tensor, num_points: Tensor | float, config: HUGConfig) -> Tensor:
    """The inter term (as a loss) from the pair mean of its kernel over ``num_points`` points.

    MHS: ``-soft_separation = t * (log mean exp(-d / t) + log #pairs)``; MHE in sum form: the
    mean times the number of ordered pairs (plus its log for the log-mean-exp Gaussian kernel);
    MHE in mean form: the mean itself. ``num_points`` is a tensor where it depends on the batch
    (the classes present) and a number where it is known (the proxies); the number becomes a
    tensor only for the forms that use it.
    """
    if config.inter != "mhs" and config.reduction != "sum":
        return value
    num = num_points if isinstance(num_points, Tensor) else value.new_tensor(num_points)
    if config.inter == "mhs":
        num_pairs = (num * (num - 1) / 2).clamp_min(1.0)
        return config.separation_t * (value + torch.log(num_pairs.to(value)))
    ordered_pairs = (num * (num - 1)).clamp_min(1.0).to(value)
    if config.kernel == "gaussian":
        return value + torch.log(ordered_pairs)
    return value * ordered_pairs


def weighted_terms(
    config: HUGConfig, inter: Tensor, intra: Tensor, ce: Tensor | None = None
) -> HUGTerms:
    """``HUGTerms`` of ``alpha * inter + beta * intra [+ ce_weight * ce]`` (each term weighted)."""
    weighted_inter = config.alpha * inter
    weighted_intra = config.beta * intra
    loss = weighted_inter + weighted_intra
    weighted_ce = None
    if ce is not None:
        weighted_ce = config.ce_weight * ce
        loss = loss + weighted_ce
    return HUGTerms(loss, weighted_inter, weighted_intra, weighted_ce)
