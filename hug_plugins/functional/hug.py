"""HUG losses as functions: proxy form (:func:`hug_loss`) and class-mean form.

Pure functions of tensors and a :class:`~hug_plugins.functional.terms.HUGConfig`; the modules
:class:`~hug_plugins.losses.HUGLoss` and :class:`~hug_plugins.losses.ClassMeanHUGLoss` call
them. :func:`hug_loss` decides, in one place, how a batch is computed: the fused node or the
composed reference path, static or learnable proxies, ``"rows"`` or ``"full"`` energy. The
formulas, reductions and energy modes are on the docs' math page.

Reference:
    Liu, Yu, Weller, Schölkopf. "Generalizing and Decoupling Neural Collapse via Hyperspherical
    Uniformity Gap." ICLR 2023. https://arxiv.org/abs/2303.06484

Examples:
    >>> import torch
    >>> from hug_plugins.functional import hug_loss
    >>> features = torch.randn(8, 16, requires_grad=True)
    >>> proxies = torch.randn(4, 16, requires_grad=True)
    >>> terms = hug_loss(features, torch.arange(8) % 4, proxies)
    >>> terms.loss.backward()
    >>> sorted(terms._asdict())
    ['ce', 'inter', 'intra', 'loss']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

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
from hug_plugins.functional.fused import (
    FusedSpec,
    fused_proxy_hug,
    fused_static_supported,
    fused_supported,
)
from hug_plugins.functional.terms import (
    HUGConfig,
    HUGTerms,
    class_counts,
    class_means,
    inter_from_pair_mean,
    inter_kernel,
    inter_term,
    intra_term,
    intra_weights,
    preset_config,
    resolve_energy_mode,
    weighted_terms,
)
from hug_plugins.functional.uniformity import autocast_disabled, unit_rows

__all__ = [
    "StaticInter",
    "class_mean_hug_loss",
    "hug_loss",
    "loss_dtype",
    "proxies_are_static",
    "static_proxy_inter",
]

StaticInter = Callable[[Tensor, torch.dtype], Tensor]
"""``(proxies, dtype) -> inter term`` of proxies that get no gradient (e.g. a cache of it)."""

_DEFAULT_CONFIG = HUGConfig()
_PROXY_DEFAULT_CONFIG = preset_config("default")  # what HUGLoss() uses


def proxies_are_static(proxies: Tensor, config: HUGConfig) -> bool:
    """Whether ``proxies`` take the static path: no gradient and no hybrid CE term.

    Examples:
        >>> proxies_are_static(torch.eye(3), HUGConfig())
        True
    """
    return not proxies.requires_grad and config.ce_weight == 0


def loss_dtype(features: Tensor, proxies: Tensor) -> torch.dtype:
    """The dtype the loss is computed in: float64 when both inputs are, else float32.

    Examples:
        >>> loss_dtype(torch.zeros(1, 2, dtype=torch.float16), torch.zeros(2, 2))
        torch.float32
    """
    return compute_dtype(features) if features.dtype == proxies.dtype else torch.float32


def static_proxy_inter(
    proxies: Tensor, config: HUGConfig | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """The exact (``"full"``) inter term of proxies, unweighted and without gradient.

    For proxies that get no gradient it is a constant of training; :class:`HUGLoss` computes it
    once per proxy tensor version.

    Args:
        proxies: ``(C, d)`` proxies.
        config: Loss configuration (default ``HUGConfig()``).
        dtype: Compute dtype (default: float64 for float64 proxies, else float32).

    Raises:
        ValueError: On non-finite proxies.

    Examples:
        >>> float(static_proxy_inter(torch.eye(2))) == 0.5  # Riesz s = 2: 1 / ||e1 - e2||^2
        True
    """
    config = _DEFAULT_CONFIG if config is None else config
    dtype = compute_dtype(proxies) if dtype is None else dtype
    raise_non_finite(proxies, "proxies")
    with torch.no_grad():
        w_hat = unit_rows(proxies.to(dtype))
        empty = torch.zeros(0, dtype=torch.long, device=proxies.device)
        counts = torch.zeros(proxies.shape[0], dtype=dtype, device=proxies.device)
        return inter_term(
            w_hat,
            labels=empty,
            counts=counts,
            config=replace(config, energy_mode="full"),
            kernel=config.pair_kernel,
            unit_input=True,
        )


def hug_loss(
    features: Tensor,
    labels: Tensor,
    proxies: Tensor,
    config: HUGConfig | None = None,
    *,
    static_inter: StaticInter | None = None,
) -> HUGTerms:
    """Proxy-based HUG (P-HUG): the loss and its weighted inter, intra (and CE) terms.

    ``loss = alpha * inter(w_hat) + beta * intra(x_hat, w_hat)``
    ``[+ ce_weight * CE(logit_scale * x_hat w_hat^T, y)]``. Features and proxies are
    L2-normalized here; the loss is computed in float32 (float64 input stays float64), also
    under autocast.

    Args:
        features: ``(B, d)`` features (any scale). Zero rows are allowed.
        labels: ``(B,)`` integer labels in ``[0, C)``.
        proxies: ``(C, d)`` class proxies, ``C >= 2``.
        config: Loss configuration (default: preset ``"default"``, the calibrated recipe that
            ``HUGLoss()`` uses, ``HUGConfig(ce_weight=1.0)``).
        static_inter: For proxies without gradient, a function ``(proxies, dtype)`` returning
            their constant inter term (default :func:`static_proxy_inter`, computed per call).

    Returns:
        :class:`~hug_plugins.functional.terms.HUGTerms` of scalars.

    Raises:
        ValueError: On bad shapes, dtypes, labels out of range, non-finite values or an
            invalid configuration.

    Examples:
        >>> terms = hug_loss(torch.randn(6, 8), torch.tensor([0, 0, 1, 1, 2, 2]), torch.eye(3, 8))
        >>> bool(torch.isclose(terms.loss, terms.inter + terms.intra + terms.ce))
        True
    """
    config = _PROXY_DEFAULT_CONFIG if config is None else config
    kernel = config.pair_kernel
    check_matrix(proxies, "proxies", values=False)
    num_classes = proxies.shape[0]
    if num_classes < 2:
        raise ValueError(f"HUG needs at least 2 proxies, got {num_classes}")
    static = proxies_are_static(proxies, config)
    batch = labels.shape[0] if isinstance(labels, Tensor) and labels.ndim == 1 else 0
    # Static proxies have no pair block, hence no energy mode.
    rows = not static and resolve_energy_mode(config, num_classes, batch) == "rows"
    if torch.compiler.is_compiling() and (static or config.inter == "mhs"):
        # The composed path (plain operations that torch.compile fuses itself): the static
        # node gains nothing there, and the MHS node's in-place backward does not trace.
        fused = False
    elif static:
        fused = fused_static_supported(config)
    else:
        fused = fused_supported(config, batch if rows else num_classes, num_classes)
    # The fused node reduces every input anyway: it checks values after computing (with
    # labels clamped into range), for O(B + C) instead of two passes over the inputs.
    deferred = fused and validation_enabled()
    check_batch(
        features, labels, num_classes, proxies, proxy_values=not static, values=not deferred
    )
    dtype = loss_dtype(features, proxies)

    def constant_inter() -> Tensor:
        if static_inter is not None:
            return static_inter(proxies, dtype)
        return static_proxy_inter(proxies, config, dtype)

    with autocast_disabled(features.device.type):
        given_labels = labels
        labels = labels.long()
        if deferred:
            labels = labels.clamp(0, num_classes - 1)
        counts = class_counts(labels, num_classes, dtype)
        if fused:
            spec = FusedSpec(
                kernel=inter_kernel(config, kernel),
                squared=config.intra == "squared_distance",
                eps=config.eps,
                rows=rows,
                train_targets=not config.detach_proxies,
                static=static,
            )
            intra, value, norm_sums = fused_proxy_hug(
                features.to(dtype),
                proxies if static else proxies.to(dtype),  # static: only B rows are cast
                labels,
                counts.index_select(0, labels).reciprocal() if rows else None,
                intra_weights(labels, counts, config),
                spec,
            )
            if deferred:
                bounds = torch.stack(torch.aminmax(given_labels))
                check_deferred(bounds, norm_sums, features, given_labels, num_classes, proxies)
            if static:
                return weighted_terms(config, constant_inter(), intra)
            return weighted_terms(
                config, inter_from_pair_mean(value, float(num_classes), config), intra
            )
        if static:
            x_hat = unit_rows(features.to(dtype))
            targets = unit_rows(proxies.index_select(0, labels).to(dtype))
            intra = intra_term(x_hat, targets, labels=labels, counts=counts, config=config)
            return weighted_terms(config, constant_inter(), intra)
        x_hat = unit_rows(features.to(dtype))
        w_hat = unit_rows(proxies.to(dtype))
        targets = (w_hat.detach() if config.detach_proxies else w_hat).index_select(0, labels)
        intra = intra_term(x_hat, targets, labels=labels, counts=counts, config=config)
        inter = inter_term(
            w_hat, labels=labels, counts=counts, config=config, kernel=kernel, unit_input=True
        )
        ce = None
        if config.ce_weight > 0:
            logits = config.logit_scale * (x_hat @ w_hat.T)
            ce = nn.functional.cross_entropy(logits, labels)
    return weighted_terms(config, inter, intra, ce)


def class_mean_hug_loss(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    config: HUGConfig | None = None,
    *,
    center: bool = False,
) -> HUGTerms:
    """General HUG without proxies: uniform class means, features pulled to their class mean.

    ``mu_hat_c`` is the normalized mean of the ``x_hat_i`` of class ``c`` in the batch
    (optionally centred by the mean of the present class means first). The inter term is the
    uniformity of the present ``mu_hat_c``; the intra term pulls each ``x_hat_i`` to
    ``mu_hat_{y_i}`` (detached when ``detach_proxies``; a one-sample class has zero pull).

    Args:
        features: ``(B, d)`` features (any scale).
        labels: ``(B,)`` integer labels in ``[0, num_classes)``.
        num_classes: Number of classes ``C``.
        config: Loss configuration (default ``HUGConfig()``); ``ce_weight`` must be 0.
        center: Whether to subtract the mean of the present class means before normalizing.

    Returns:
        :class:`~hug_plugins.functional.terms.HUGTerms` of scalars (``ce`` is ``None``).

    Raises:
        ValueError: On bad inputs or configuration.

    Examples:
        >>> terms = class_mean_hug_loss(torch.randn(6, 8), torch.tensor([0, 0, 1, 1, 2, 2]), 3)
        >>> terms.ce is None
        True
    """
    config = _DEFAULT_CONFIG if config is None else config
    kernel = config.pair_kernel
    if config.ce_weight > 0:
        raise ValueError(
            "ce_weight > 0 needs class proxies (the hybrid's logits); the class-mean form has "
            "none: use HUGLoss with a ProxyHead"
        )
    check_batch(features, labels, num_classes)
    dtype = compute_dtype(features)
    with autocast_disabled(features.device.type):
        x_hat = unit_rows(features.to(dtype))
        labels = labels.long()
        means, counts = class_means(x_hat, labels, num_classes)
        present = (counts > 0).to(dtype)
        if center:
            global_mean = (means * present[:, None]).sum(0) / present.sum().clamp_min(1.0)
            means = means - global_mean * present[:, None]
        mu_hat = unit_rows(means)
        targets = (mu_hat.detach() if config.detach_proxies else mu_hat).index_select(0, labels)
        intra = intra_term(x_hat, targets, labels=labels, counts=counts, config=config)
        inter = inter_term(
            mu_hat, labels=labels, counts=counts, config=config, kernel=kernel,
            present=present, unit_input=True,
        )  # fmt: skip
    return weighted_terms(config, inter, intra)
