"""Fused P-HUG: the proxy HUG loss as one autograd node with a hand-written backward pass.

The same loss as the composed reference path of :func:`hug_plugins.functional.hug_loss`, with
one autograd node whose backward pass is one or two matrix products plus ``O(B d + C d)``
element-wise work, as a linear layer's; no normalized copy of the features (nor, in rows mode,
of the proxies); the element-wise work on the pair block in one function that
``torch.compile`` fuses when the block is large enough (:func:`set_compile`). It covers the MHE
and MHS inter terms with the distance and squared-distance pulls (:func:`fused_supported`);
static proxies run the node without its pair block. The design is on the docs' math page; the
two paths agree to rounding (tested in float64).

Examples:
    >>> import torch
    >>> from hug_plugins.losses import HUGLoss
    >>> loss_fn = HUGLoss()  # uses this module whenever fused_supported(...) holds
    >>> features = torch.randn(8, 16, requires_grad=True)
    >>> proxies = torch.nn.Parameter(torch.randn(4, 16))
    >>> loss_fn(features, torch.tensor([0, 1, 2, 3] * 2), proxies).backward()
"""

from __future__ import annotations

import functools
import math
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from hug_plugins.functional.kernels import MAX_HELD_PAIRS, PairKernel

UNIT_EPS = 1e-12
"""Norm floor of the feature and proxy normalization (as :func:`~hug_plugins.unit_rows`)."""

COMPILE_MIN_PAIRS = 1 << 17
"""Smallest pair block (128k elements, e.g. ``C = 512`` at ``B = 256``) compiled in ``"auto"``
mode. Below it a step's element-wise work is a fraction of a millisecond, and the first
compilation (10-30 s on a CPU; cached on disk for later processes) would take thousands of
steps to pay off."""

CompileMode = Literal["auto", "always", "never"]
_compile_mode: CompileMode = "auto"
_compiled_fns: dict[tuple[str, str], Callable[..., Any]] = {}
_compile_failed = False
_fused_enabled = True


def set_fused(enabled: bool) -> None:
    """Turns the fused path on (default) or off (every loss runs the reference path).

    The reference path exists for comparison: tests and ``integrations/bench_loss.py`` use
    this switch to measure one against the other.
    """
    global _fused_enabled
    _fused_enabled = bool(enabled)


def fused_enabled() -> bool:
    """Whether the fused path is on (see :func:`set_fused`)."""
    return _fused_enabled


def set_compile(mode: CompileMode) -> None:
    """Chooses when :func:`pair_block` runs through ``torch.compile``.

    * ``"auto"`` (default): for pair blocks of at least :data:`COMPILE_MIN_PAIRS` elements,
      when a C++ compiler is on the path (CPU) or the block is on CUDA;
    * ``"always"``: for every block (tests use it to check the compiled code);
    * ``"never"``: eager only.

    A failed compilation warns once and falls back to eager for the rest of the process.

    Raises:
        ValueError: On an unknown mode.
    """
    global _compile_mode
    if mode not in ("auto", "always", "never"):
        raise ValueError(f"compile mode must be 'auto', 'always' or 'never', got {mode!r}")
    _compile_mode = mode


def compile_mode() -> CompileMode:
    """The current :func:`set_compile` mode."""
    return _compile_mode


def _want_compiled(pairs: int, device: torch.device) -> bool:
    if torch.compiler.is_compiling():  # the caller's torch.compile fuses the whole loss
        return False
    if _compile_failed or _compile_mode == "never":
        return False
    if _compile_mode == "always":
        return True
    if pairs < COMPILE_MIN_PAIRS:
        return False
    return device.type == "cuda" or _has_cpp_compiler()


@functools.cache
def _has_cpp_compiler() -> bool:
    """Whether inductor's CPU backend finds a C++ compiler (looked up once per process)."""
    return shutil.which("c++") is not None or shutil.which("g++") is not None


@dataclass(frozen=True)
class FusedSpec:
    """What the fused node computes (constants of one loss configuration).

    Attributes:
        kernel: Pair kernel of the inter term.
        squared: Intra term is the squared distance (else the distance).
        eps: Distance floor of the intra term.
        rows: Anchors are the batch labels (rows mode) rather than all proxies (full mode).
        train_targets: Proxies receive the intra term's gradient (``detach_proxies=False``).
        static: The proxies are constants (they get no gradient): the node computes the intra
            term only, from the ``B`` proxy rows of the batch labels, in ``O(B d)`` whatever
            ``C``; its inter output is zero (the caller adds the constant inter term).
    """

    kernel: PairKernel
    squared: bool
    eps: float
    rows: bool
    train_targets: bool
    static: bool = False


def fused_supported(config: Any, anchors: int, num_classes: int) -> bool:
    """Whether the fused node computes the loss of ``config`` (a ``HUGConfig``).

    Args:
        config: The loss configuration.
        anchors: Rows of the pair block (batch size in rows mode, ``C`` in full mode).
        num_classes: Number of proxies ``C``.
    """
    return (
        fused_static_supported(config)
        and config.inter in ("mhe", "mhs")
        and anchors * num_classes <= MAX_HELD_PAIRS
    )


def fused_static_supported(config: Any) -> bool:
    """Whether the fused node computes the intra term of ``config`` (all that static proxies
    need; :func:`fused_supported` adds the inter term's conditions)."""
    return (
        _fused_enabled
        and config.intra in ("distance", "squared_distance")
        and config.ce_weight == 0
    )


def pair_block(
    unit_anchors: Tensor,
    proxies: Tensor,
    inv_norms: Tensor,
    sq_rows: Tensor,
    sq_cols: Tensor,
    row_weights: Tensor,
    exclude: Tensor,
    kernel: PairKernel,
    need_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """Pair sums of one loss step: ``sum_i a_i sum_{c != exclude_i} K(d2_ic)`` and its gradient.

    ``d2_ic = sq_rows_i + sq_cols_c - 2 <U_i, W_c> r_c`` is the squared distance between the
    normalized anchor ``U_i`` and the normalized proxy ``W_c r_c`` (``sq`` are their squared
    norms: 1, or 0 for a zero vector).

    Args:
        unit_anchors: ``(m, d)`` normalized anchors ``U``.
        proxies: ``(C, d)`` raw proxies ``W``.
        inv_norms: ``(C,)`` inverse proxy norms ``r``.
        sq_rows: ``(m,)`` squared norms of ``U``.
        sq_cols: ``(C,)`` squared norms of ``W r``.
        row_weights: ``(m,)`` positive row weights ``a_i``.
        exclude: ``(m,)`` column excluded from each row.
        kernel: The pair kernel.
        need_grad: Whether to return the gradient factors.

    Returns:
        ``(stat, D)``. Plain kernels: ``stat = sum_i a_i sum_c K_ic`` and ``D_ic = K'_ic r_c``
        (derivative in ``d2``, unweighted). Log-mean-exp kernels: ``stat = logsumexp_ic(g_ic +
        log a_i)`` and ``D_ic = softmax_ic g'_ic r_c``. ``D`` is ``None`` without
        ``need_grad``. No column reduction of the block: the backward pass gets the proxies'
        radial correction from its own matrix product (:func:`hug_backward`).
    """
    gram = unit_anchors @ proxies.T
    d2 = torch.addcmul(sq_cols[None, :], gram, inv_norms[None, :], value=-2.0)
    d2 = d2.add_(sq_rows[:, None]).clamp_(min=0.0)
    values, deriv = kernel.evaluate(d2, need_grad)
    if kernel.log_mean_exp:
        values = _drop_excluded(values.add_(torch.log(row_weights)[:, None]), exclude, -math.inf)
        stat = torch.logsumexp(values.flatten(), dim=0)
        if not need_grad:
            return stat, None
        coef = values.sub_(stat).exp_()
        coef = coef.mul_(deriv) if deriv is not None else coef.mul_(-kernel.param)
        return stat, coef.mul_(inv_norms[None, :])
    stat = _drop_excluded(values, exclude, 0.0).sum(1) @ row_weights
    if deriv is None:
        return stat, None
    return stat, _drop_excluded(deriv, exclude, 0.0).mul_(inv_norms[None, :])


def _drop_excluded(block: Tensor, exclude: Tensor, fill: float) -> Tensor:
    """``block`` with ``block[i, exclude_i] = fill``.

    Eager: an in-place ``scatter_`` (``m`` writes). Under ``torch.compile``: a column mask,
    which Inductor fuses into the kernel's pointwise pass and the row sum that follow (a
    scatter is a kernel of its own there, and splits the ``(m, C)`` block into two passes).
    """
    if torch.compiler.is_compiling():
        columns = torch.arange(block.shape[1], device=block.device)
        return torch.where(columns[None, :] == exclude[:, None], fill, block)
    return block.scatter_(1, exclude[:, None], fill)


def _intra_side(
    features: Tensor,
    targets: Tensor,
    sq_targets: Tensor,
    intra_weights: Tensor,
    spec: FusedSpec,
    scratch: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Intra term of the normalized features to their targets, with its gradient factors.

    Returns ``(intra, norm_sum, gap, pull, feature_scale, radial_scale)``: the weighted sum of
    the distances, the sum of the feature norms, ``gap = t - x_hat`` and the per-sample factors
    of the backward pass, ``dL/dx = -g (gap * feature_scale + x * radial_scale)`` and
    ``dL/dt = g pull gap``. The features are never normalized into a copy: ``x_hat`` enters
    as ``x / |x|`` in ``gap`` only, and the radial part of the normalization's backward pass
    uses ``<x_hat - t, x_hat> = (|x_hat|^2 + |gap|^2 - |t|^2) / 2`` with ``|x_hat| = 1`` (it
    applies only where ``|x|`` exceeds the norm floor).

    With ``scratch`` the ``(B, d)`` ``targets`` are a copy of the caller's that it does not
    need again, and ``gap`` is written into them: each fresh ``(B, d)`` buffer costs about as
    much as the arithmetic on it on a CPU, so the forward pass allocates one at most.
    """
    norms_x = torch.linalg.vector_norm(features, dim=1)
    inv_x = norms_x.clamp_min(UNIT_EPS).reciprocal()
    if scratch:
        gap = targets.addcmul_(features, inv_x[:, None], value=-1.0)
    else:
        gap = torch.addcmul(targets, features, inv_x[:, None], value=-1.0)
    d2 = torch.linalg.vector_norm(gap, dim=1).square()
    eps2 = spec.eps * spec.eps
    if spec.squared:
        intra = d2 @ intra_weights
        pull = 2.0 * intra_weights
    else:
        dist = d2.clamp_min(eps2).sqrt()
        intra = dist @ intra_weights
        pull = (intra_weights / dist).masked_fill_(d2 <= eps2, 0.0)
    feature_scale = pull * inv_x
    half_inv = (0.5 * inv_x).masked_fill_(norms_x <= UNIT_EPS, 0.0)
    radial_scale = (d2 - sq_targets).add_(1.0).mul_(feature_scale).mul_(half_inv)
    return intra, norms_x.sum(), gap, pull, feature_scale, radial_scale


def _symmetric_pairs(
    unit_w: Tensor, sq_w: Tensor, kernel: PairKernel, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """Pair statistic of all proxies against each other and its (symmetric) derivative block.

    Plain kernels: ``stat = sum_{i != j} K(d2_ij)``, ``D_ij = K'(d2_ij)``; log-mean-exp kernels:
    ``stat = logsumexp_{i != j} g_ij``, ``D_ij = softmax_ij g'_ij``. ``D`` has a zero diagonal.
    """
    d2 = torch.addmm(sq_w[:, None] + sq_w, unit_w, unit_w.T, alpha=-2.0).clamp_(min=0.0)
    values, deriv = kernel.evaluate(d2, need_grad)
    if kernel.log_mean_exp:
        stat = torch.logsumexp(values.fill_diagonal_(-math.inf).flatten(), dim=0)
        if not need_grad:
            return stat, None
        coef = values.sub_(stat).exp_()
        return stat, coef.mul_(deriv) if deriv is not None else coef.mul_(-kernel.param)
    stat = values.fill_diagonal_(0.0).sum()
    return stat, None if deriv is None else deriv.fill_diagonal_(0.0)


def _ordered_pairs(num_classes: int) -> float:
    """Number of ordered pairs of distinct proxies: the full-mode pair mean's normalization."""
    return float(num_classes * (num_classes - 1))


def hug_forward(
    features: Tensor,
    proxies: Tensor,
    labels: Tensor,
    row_weights: Tensor | None,
    intra_weights: Tensor,
    spec: FusedSpec,
    need_grad: bool,
) -> tuple[Tensor, ...]:
    """Forward math of the fused node: ``(intra, inter, norm_sums, *saved)``.

    ``norm_sums`` are the sums of the feature and of the proxy norms (finite iff the inputs
    are, barring overflow); see :func:`fused_proxy_hug`.

    Full mode (``C <= B`` under ``energy_mode="auto"``) works on one normalized copy ``W_hat``
    of the proxies: the pair block is the symmetric ``(C, C)`` block of ``W_hat W_hat^T``. Rows
    mode (large ``C``) never normalizes the ``(C, d)`` proxies: see :func:`pair_block`.

    Static proxies (``spec.static``): the intra term only, from the proxy rows of the labels;
    ``norm_sums`` then holds the sum of the norms of those rows.

    A pure function of tensors and constants, so that ``torch.compile`` can fuse it.
    """
    if spec.static:
        rows_w = proxies.index_select(0, labels).to(features.dtype)
        norms_t = torch.linalg.vector_norm(rows_w, dim=1)
        inv_t = norms_t.clamp_min(UNIT_EPS).reciprocal()
        intra, norm_sum_x, *factors = _intra_side(
            features,
            rows_w.mul_(inv_t[:, None]),
            (norms_t * inv_t).square(),
            intra_weights,
            spec,
            scratch=True,
        )
        static_out = (intra, intra.new_zeros(()), torch.stack([norm_sum_x, norms_t.sum()]))
        return (*static_out, *factors) if need_grad else static_out
    norms_w = torch.linalg.vector_norm(proxies, dim=1)
    inv_w = norms_w.clamp_min(UNIT_EPS).reciprocal()
    sq_w = (norms_w * inv_w).square()
    if spec.rows:  # anchors are the labels: the intra targets are the pair block's rows
        targets = proxies.index_select(0, labels).mul_(inv_w.index_select(0, labels)[:, None])
    else:
        unit_w = proxies * inv_w[:, None]
        targets = unit_w.index_select(0, labels)
    sq_targets = sq_w.index_select(0, labels)
    intra, norm_sum_x, gap, pull, feature_scale, radial_scale = _intra_side(
        features, targets, sq_targets, intra_weights, spec, scratch=not spec.rows
    )
    norm_sums = torch.stack([norm_sum_x, norms_w.sum()])
    active_w = norms_w > UNIT_EPS
    if not spec.rows:
        stat, coef = _symmetric_pairs(unit_w, sq_w, spec.kernel, need_grad)
        pairs = _ordered_pairs(proxies.shape[0])
        inter = stat - math.log(pairs) if spec.kernel.log_mean_exp else stat / pairs
        if not need_grad:
            return intra, inter, norm_sums
        assert coef is not None
        return (
            intra, inter, norm_sums, gap, pull, feature_scale, radial_scale,
            inv_w, active_w, unit_w, coef,
        )  # fmt: skip
    assert row_weights is not None  # fused_proxy_hug checks it
    pair_total = row_weights.sum() * (proxies.shape[0] - 1)
    stat, coef = pair_block(
        targets, proxies, inv_w, sq_targets, sq_w, row_weights, labels, spec.kernel, need_grad
    )
    if spec.kernel.log_mean_exp:
        inter = stat - torch.log(pair_total)
        anchor_scale = torch.ones_like(row_weights)
    else:
        inter = stat / pair_total
        anchor_scale = row_weights / pair_total
    if not need_grad:
        return intra, inter, norm_sums
    assert coef is not None
    return (
        intra, inter, norm_sums, gap, pull, feature_scale, radial_scale,
        inv_w, active_w, targets, coef, anchor_scale,
    )  # fmt: skip


def hug_backward(
    grad_intra: Tensor,
    grad_inter: Tensor,
    features: Tensor,
    proxies: Tensor,
    labels: Tensor,
    saved: tuple[Tensor, ...],
    spec: FusedSpec,
    need_x: bool,
    need_w: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """Backward math of the fused node: gradients of features and proxies.

    Features: ``dL/dx = -g_intra (gap * feature_scale + x * radial_scale)`` (see
    :func:`_intra_side`). Full mode: ``dL/dW_hat = -4 g s D W_hat`` (``D`` symmetric, ``s`` the
    pair scale) plus the intra targets' ``g_intra pull gap``, then one normalization
    backward ``(G - W_hat <G, W_hat>) / |W|``. Rows mode, with ``D`` and the anchor scales
    ``s_i`` of :func:`pair_block`: ``M = -2 g D^T (s U)`` and ``dL/dW_c = M_c - r_c^2 <M_c,
    W_c> W_c`` (columns; the second part is the normalization's radial correction, a row-wise
    pass over ``M`` and ``W``), ``dL/dU_i = -2 g s_i (D W)_i`` (anchors, then through the
    normalization of ``W[anchors]``). Static proxies: features only. The ``(B, d)`` results
    are computed in place where they are fresh buffers.
    """
    gap, pull, feature_scale, radial_scale = saved[:4]
    grad_x = None
    if need_x:
        grad_x = (gap * (-grad_intra * feature_scale)[:, None]).addcmul_(
            features, (grad_intra * radial_scale)[:, None], value=-1.0
        )
    if not need_w:
        return grad_x, None
    inv_w, active_w, unit_rows, coef = saved[4:8]
    grad_targets = gap * (grad_intra * pull)[:, None] if spec.train_targets else None
    if not spec.rows:  # unit_rows is W_hat, coef the symmetric block
        # Log-mean-exp kernels: the softmax weights in ``coef`` already sum to one.
        pairs = 1.0 if spec.kernel.log_mean_exp else _ordered_pairs(proxies.shape[0])
        grad_unit = (coef * ((-4.0 / pairs) * grad_inter)) @ unit_rows
        if grad_targets is not None:
            grad_unit = grad_unit.index_add_(0, labels, grad_targets)
        radial = torch.linalg.vecdot(grad_unit, unit_rows, dim=1) * active_w
        grad_w = grad_unit.addcmul_(unit_rows, radial[:, None], value=-1.0)
        return grad_x, grad_w.mul_(inv_w[:, None])
    (anchor_scale,) = saved[8:]
    scale = (-2.0 * grad_inter) * anchor_scale
    grad_w = coef.T @ (unit_rows * scale[:, None])
    column_radial = torch.linalg.vecdot(grad_w, proxies, dim=1) * inv_w * inv_w * active_w
    grad_w = grad_w.addcmul_(proxies, column_radial[:, None], value=-1.0)
    grad_anchors = (coef @ proxies).mul_(scale[:, None])
    if grad_targets is not None:
        grad_anchors = grad_anchors.add_(grad_targets)
    radial = torch.linalg.vecdot(grad_anchors, unit_rows, dim=1) * active_w.index_select(0, labels)
    grad_anchors = grad_anchors.addcmul_(unit_rows, radial[:, None], value=-1.0)
    grad_anchors = grad_anchors.mul_(inv_w.index_select(0, labels)[:, None])
    return grad_x, grad_w.index_add_(0, labels, grad_anchors)


def _compiled(fn: Callable[..., Any], device: torch.device, size: int) -> Callable[..., Any]:
    """``fn`` itself, or its ``torch.compile`` d version when :func:`set_compile` asks for it.

    The compiled runner (with its eager fallback) is built once per function and device type.
    """
    if not _want_compiled(size, device):
        return fn
    key = (fn.__name__, device.type)
    if key not in _compiled_fns:
        _compiled_fns[key] = _with_eager_fallback(fn, torch.compile(fn, dynamic=None))
    return _compiled_fns[key]


def _with_eager_fallback(
    fn: Callable[..., Any], compiled: Callable[..., Any]
) -> Callable[..., Any]:
    """Runs ``compiled``; on any failure warns once, runs ``fn`` and stays eager from then on."""

    def run(*args: Any) -> Any:
        global _compile_failed
        try:
            return compiled(*args)
        except Exception as exc:  # no compiler, unsupported backend: eager from now on
            _compile_failed = True
            warnings.warn(
                f"torch.compile of the fused HUG loss failed ({type(exc).__name__}: {exc}); "
                "running eager",
                RuntimeWarning,
                stacklevel=4,
            )
            return fn(*args)

    return run


class _FusedProxyHUG(torch.autograd.Function):
    """``(intra, inter)`` of P-HUG in one node; see :func:`hug_backward` for the algebra."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        features: Tensor,
        proxies: Tensor,
        labels: Tensor,
        row_weights: Tensor | None,
        intra_weights: Tensor,
        spec: FusedSpec,
    ) -> tuple[Tensor, Tensor, Tensor]:
        needs = ctx.needs_input_grad  # type: ignore[attr-defined]
        need_x, need_w = bool(needs[0]), bool(needs[1])
        need_grad = need_x or need_w
        # Pair block size: decides compilation (the static node has no pair block).
        size = 0 if spec.static else (labels.shape[0] if spec.rows else proxies.shape[0])
        size *= proxies.shape[0]
        forward = _compiled(hug_forward, proxies.device, size)
        with torch.no_grad():
            out = forward(features, proxies, labels, row_weights, intra_weights, spec, need_grad)
        ctx.spec = spec  # type: ignore[attr-defined]
        ctx.flags = (need_x, need_w, size)  # type: ignore[attr-defined]
        if need_grad:
            ctx.save_for_backward(features, proxies, labels, *out[3:])
        ctx.mark_non_differentiable(out[2])
        ctx.set_materialize_grads(False)  # no zero tensor for the norms' (absent) gradient
        return out[0], out[1], out[2]

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_intra: Tensor | None, grad_inter: Tensor | None, _grad_norms: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        features, proxies, labels, *saved = ctx.saved_tensors
        if grad_intra is None:  # a term the loss did not use
            grad_intra = proxies.new_zeros(())
        if grad_inter is None:
            grad_inter = proxies.new_zeros(())
        need_x, need_w, size = ctx.flags
        backward = _compiled(hug_backward, proxies.device, size)
        grad_x, grad_w = backward(
            grad_intra, grad_inter, features, proxies, labels, tuple(saved), ctx.spec,
            need_x, need_w,
        )  # fmt: skip
        return grad_x, grad_w, None, None, None, None


def fused_proxy_hug(
    features: Tensor,
    proxies: Tensor,
    labels: Tensor,
    row_weights: Tensor | None,
    intra_weights: Tensor,
    spec: FusedSpec,
) -> tuple[Tensor, Tensor, Tensor]:
    """Unweighted intra term and inter pair mean of P-HUG in one autograd node.

    The pair block's rows (anchors) are all proxies in full mode and the proxies of the batch
    labels in rows mode (``spec.rows``); each anchor skips its own column.

    Args:
        features: ``(B, d)`` raw features (normalized here).
        proxies: ``(C, d)`` raw proxies (normalized here), same dtype as ``features``
            (static proxies: any floating dtype; only the rows of ``labels`` are read and cast).
        labels: ``(B,)`` int64 labels.
        row_weights: Rows mode: ``(B,)`` positive anchor weights. Full mode: ``None`` (every
            proxy weighs one).
        intra_weights: ``(B,)`` weights of the per-sample intra distances.
        spec: What to compute.

    Returns:
        ``(intra, inter, norm_sums)``: ``sum_b intra_weights_b dist_b``, the weighted pair
        mean of the kernel (log-mean-exp kernels: the log of the mean of ``exp``), as
        :func:`~hug_plugins.functional.uniformity.pair_kernel_mean` returns it, and the sums of the
        feature and proxy norms (no gradient; finite iff the inputs are, barring overflow).

    Raises:
        ValueError: In rows mode without ``row_weights``.
    """
    if spec.rows and row_weights is None:
        raise ValueError("rows mode needs row_weights (one weight per batch label)")
    intra, inter, norm_sums = _FusedProxyHUG.apply(
        features, proxies, labels, row_weights, intra_weights, spec
    )
    return intra, inter, norm_sums
