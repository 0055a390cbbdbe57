"""Hyperspherical uniformity measures: energy (MHE), separation (MHS) and Gram log-det (MGD).

All measures act on points on the unit hypersphere (rows of an ``(n, d)`` tensor, normalized
here unless ``normalize=False``), are differentiable and batched, and are computed in float32
(float64 inputs stay float64) with autocast disabled, so fp16/bf16 training cannot overflow
them.

Pairwise energies are evaluated by a custom autograd function that walks the pair matrix in
row chunks in both the forward and the backward pass, so memory is ``O(chunk * n)`` instead of
``O(n^2)``, with no host synchronisation. Distances are clamped at ``eps`` so that exact
duplicates are penalized with a large but finite value rather than dropped or turned into inf.

Reference:
    Liu, Yu, Weller, Schölkopf. "Generalizing and Decoupling Neural Collapse via Hyperspherical
    Uniformity Gap." ICLR 2023. https://arxiv.org/abs/2303.06484

    Wang, Isola. "Understanding Contrastive Representation Learning through Alignment and
    Uniformity on the Hypersphere." ICML 2020 (the Gaussian log-mean-exp form).

Example:
    >>> import torch
    >>> from hug_plugins.uniformity import riesz_energy
    >>> points = torch.randn(10, 3, requires_grad=True)
    >>> energy = riesz_energy(points, s=1.0)
    >>> energy.backward()
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from hug_plugins._checks import check_matrix, compute_dtype

KernelName = Literal["riesz", "log", "gaussian"]

DEFAULT_EPS = 1e-4
"""Default distance floor: pairs closer than this count as if at this distance."""

_PAIR_BUDGET = {"cpu": 1 << 22, "cuda": 1 << 25}
"""Elements of one (chunk x n) pair block: 16 MiB fp32 on the CPU (cache-friendly), 128 MiB on
CUDA (large blocks keep the matrix products efficient)."""


@dataclass(frozen=True)
class PairKernel:
    """A kernel of the squared distance ``f(||u - v||^2)`` used by the chunked pair sums.

    ``kind`` selects the formula:

    * ``"riesz"``: ``sign(s) * d^-s`` (``s != 0``).
    * ``"log"``: ``log(1 / d)`` (the ``s = 0`` member of the Riesz family).
    * ``"gaussian"``: log-mean-exp of ``-t * d^2`` (Wang & Isola uniformity).
    * ``"softmin"``: log-mean-exp of ``-d / t`` (smooth minimum distance, for MHS).

    The last two are "log-mean-exp" kernels: the pair sum returns ``log(mean(exp(g(d^2))))``.

    Attributes:
        kind: Kernel family.
        param: ``s`` for Riesz, ``t`` for Gaussian and softmin, unused for log.
        eps: Distance floor.
    """

    kind: Literal["riesz", "log", "gaussian", "softmin"]
    param: float = 1.0
    eps: float = DEFAULT_EPS

    @property
    def log_mean_exp(self) -> bool:
        """Whether the pair sum is a log-mean-exp rather than a plain mean."""
        return self.kind in ("gaussian", "softmin")

    def value(self, d2: Tensor) -> Tensor:
        """Kernel value (or exponent ``g`` for log-mean-exp kernels) at squared distance."""
        eps2 = self.eps * self.eps
        if self.kind == "riesz":
            sign = 1.0 if self.param > 0 else -1.0
            return sign * d2.clamp_min(eps2).pow(-self.param / 2.0)
        if self.kind == "log":
            return -0.5 * torch.log(d2.clamp_min(eps2))
        if self.kind == "gaussian":
            return -self.param * d2
        return -torch.sqrt(d2.clamp_min(eps2)) / self.param

    def derivative(self, d2: Tensor) -> Tensor:
        """Derivative of :meth:`value` with respect to the squared distance."""
        eps2 = self.eps * self.eps
        if self.kind == "gaussian":
            return torch.full_like(d2, -self.param)
        clamped = d2.clamp_min(eps2)
        active = (d2 > eps2).to(d2.dtype)
        if self.kind == "riesz":
            return -abs(self.param) / 2.0 * clamped.pow(-self.param / 2.0 - 1.0) * active
        if self.kind == "log":
            return -0.5 / clamped * active
        return -0.5 / (self.param * torch.sqrt(clamped)) * active

    def evaluate(self, d2: Tensor, need_derivative: bool) -> tuple[Tensor, Tensor | None]:
        """Value and (optionally) derivative at ``d2`` with shared intermediates.

        Equivalent to ``(value(d2), derivative(d2))`` but with fewer passes over a block;
        ``d2`` may be overwritten.
        """
        if not need_derivative:
            return self.value(d2), None
        eps2 = self.eps * self.eps
        if self.kind == "gaussian":
            return d2.mul_(-self.param), None  # derivative is the constant -t
        active = d2 > eps2
        clamped = d2.clamp_(min=eps2)
        if self.kind == "riesz" and self.param == 2.0:
            value = clamped.reciprocal_()  # d^-2
            deriv = value * value  # -f' = d^-4
            return value, torch.where(active, deriv.neg_(), 0.0)
        if self.kind == "riesz":
            magnitude = clamped.pow(-self.param / 2.0)  # |f| = d^-s
            deriv = magnitude.div(clamped)
            scale = -abs(self.param) / 2.0
            value = magnitude if self.param > 0 else magnitude.neg_()
        elif self.kind == "log":
            deriv = clamped.reciprocal()
            scale = -0.5
            value = clamped.log_().mul_(-0.5)
        else:
            dist = clamped.sqrt_()
            deriv = dist.reciprocal()
            scale = -0.5 / self.param
            value = dist.mul_(-1.0 / self.param)
        return value, torch.where(active, deriv.mul_(scale), 0.0)


def make_kernel(
    kernel: str = "riesz", s: float = 1.0, t: float = 2.0, eps: float = DEFAULT_EPS
) -> PairKernel:
    """Builds and validates a :class:`PairKernel` from user-facing arguments.

    Args:
        kernel: ``"riesz"``, ``"log"`` or ``"gaussian"``. ``"riesz"`` with ``s == 0`` is the
            log kernel.
        s: Riesz exponent (any real number).
        t: Gaussian temperature (> 0).
        eps: Distance floor (> 0).

    Returns:
        The kernel.

    Raises:
        ValueError: On an unknown kernel or a parameter for which the energy at distance
            ``eps`` would not be finite in float32.
    """
    if not (isinstance(eps, float | int) and 0 < eps < 1):
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    if kernel == "riesz":
        if not math.isfinite(s):
            raise ValueError(f"s must be a finite real number, got {s}")
        if s == 0:
            return PairKernel("log", 0.0, float(eps))
        if s > 0 and s * -math.log10(eps) > 30:
            raise ValueError(
                f"Riesz s={s} with eps={eps} gives eps^-s > 1e30 (float32 overflow); "
                "use a larger eps or a smaller s"
            )
        return PairKernel("riesz", float(s), float(eps))
    if kernel == "log":
        return PairKernel("log", 0.0, float(eps))
    if kernel == "gaussian":
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"Gaussian temperature t must be > 0, got {t}")
        return PairKernel("gaussian", float(t), float(eps))
    raise ValueError(f"unknown kernel {kernel!r}; expected 'riesz', 'log' or 'gaussian'")


@contextlib.contextmanager
def autocast_disabled(device_type: str) -> Iterator[None]:
    """Disables autocast on ``device_type`` (a no-op where the device has none).

    Every energy, kernel and loss term of the package runs inside it, so that fp16/bf16
    training computes them in float32.
    """
    try:
        ctx = torch.autocast(device_type=device_type, enabled=False)
    except (RuntimeError, ValueError):  # device without autocast support
        ctx = contextlib.nullcontext()  # type: ignore[assignment]
    with ctx:
        yield


def _chunk_size(rows: int, cols: int, chunk_size: int | None, device: str = "cpu") -> int:
    """Rows per block: the given size, one block when the backward pass would cache every block
    anyway (``rows * cols <= _CACHE_BUDGET``), else the device's block budget."""
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return chunk_size
    if rows * cols <= _CACHE_BUDGET:
        return max(1, rows)
    budget = _PAIR_BUDGET.get(device, _PAIR_BUDGET["cpu"])
    return max(1, min(rows, budget // max(cols, 1)))


_CACHE_BUDGET = 1 << 26  # pair-matrix elements kept from forward to backward (256 MiB fp32)


def _sq_norms(x: Tensor) -> Tensor:
    """Row-wise squared norms (``vector_norm`` is the fastest reduction on CPU)."""
    norms: Tensor = torch.linalg.vector_norm(x, dim=1)
    return norms.square_()


class _UnitRows(torch.autograd.Function):
    """``x / max(||x||, eps)`` row-wise with a fused backward (fewer passes than autograd's)."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, eps: float) -> Tensor:
        norms: Tensor = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        clamped = norms.clamp_min(eps)
        unit = x / clamped
        ctx.save_for_backward(unit, clamped, norms > eps)
        return unit

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        unit, clamped, active = ctx.saved_tensors
        radial = torch.linalg.vecdot(grad, unit, dim=1).unsqueeze(1) * active
        return torch.addcmul(grad, unit, radial, value=-1.0).div_(clamped), None


def unit_rows(x: Tensor, eps: float = 1e-12) -> Tensor:
    """L2-normalizes the rows of ``x`` (zero rows stay zero), like ``F.normalize(x, dim=1)``.

    Example:
        >>> import torch
        >>> unit_rows(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
        tensor([[0.6000, 0.8000],
                [0.0000, 0.0000]])
    """
    out: Tensor = _UnitRows.apply(x, eps)
    return out


def _sq_dists(xc: Tensor, xc_sq: Tensor, y: Tensor, y_sq: Tensor) -> Tensor:
    """``||x_i - y_j||^2`` of a row block by the Gram trick, clamped at 0 (fresh tensor)."""
    d2 = torch.addmm(y_sq[None, :], xc, y.T, beta=1.0, alpha=-2.0)
    return d2.add_(xc_sq[:, None]).clamp_(min=0.0)


def _set_excluded_(mat: Tensor, excl: Tensor, fill: float) -> Tensor:
    """Sets ``mat[i, excl[i]] = fill`` for rows with ``excl[i] >= 0``, in place, O(rows)."""
    idx = excl.clamp_min(0)[:, None]
    current = mat.gather(1, idx)
    src = torch.where((excl >= 0)[:, None], torch.full_like(current, fill), current)
    return mat.scatter_(1, idx, src)


def _pair_normalizer(
    row_w: Tensor | None, col_w: Tensor | None, exclude: Tensor, m: int, n: int, like: Tensor
) -> Tensor:
    """``sum_ij a_i b_j`` over the kept pairs (``j != exclude[i]``)."""
    row_total = row_w.sum() if row_w is not None else like.new_tensor(float(m))
    col_total = col_w.sum() if col_w is not None else like.new_tensor(float(n))
    excl_col = (
        col_w[exclude.clamp_min(0)]
        if col_w is not None
        else torch.ones_like(exclude, dtype=like.dtype)
    )
    excl_pair = excl_col if row_w is None else row_w * excl_col
    excluded = torch.where(exclude >= 0, excl_pair, torch.zeros_like(excl_pair))
    return row_total * col_total - excluded.sum()


class _Block:
    """One row block of the pair sum: its statistic and what the backward pass needs."""

    __slots__ = ("deriv", "stat", "values")

    def __init__(self, stat: Tensor, values: Tensor | None, deriv: Tensor | None) -> None:
        self.stat = stat
        self.values = values
        self.deriv = deriv


def _eval_block(
    kernel: PairKernel,
    x: Tensor,
    x_sq: Tensor,
    y: Tensor,
    y_sq: Tensor,
    row_w: Tensor | None,
    col_w: Tensor | None,
    exclude: Tensor,
    start: int,
    stop: int,
    need_grad: bool,
) -> _Block:
    """Evaluates rows ``start:stop``.

    Plain kernels: ``stat`` is ``sum_ij a_i b_j K_ij`` and ``deriv`` the unnormalized gradient
    coefficients ``a_i b_j K'_ij`` (0 on excluded pairs). Log-mean-exp kernels: ``stat`` is
    ``logsumexp_ij(g_ij + log a_i + log b_j)``, ``values`` those log-weighted exponents (-inf on
    excluded pairs) and ``deriv`` is ``g'_ij`` (``None`` when constant).
    """
    excl = exclude[start:stop]
    d2 = _sq_dists(x[start:stop], x_sq[start:stop], y, y_sq)
    values, deriv = kernel.evaluate(d2, need_grad)
    if kernel.log_mean_exp:
        if col_w is not None:
            values = values.add_(torch.log(col_w)[None, :])
        if row_w is not None:
            values = values.add_(torch.log(row_w[start:stop])[:, None])
        values = _set_excluded_(values, excl, -math.inf)
        stat = torch.logsumexp(values.flatten(), dim=0)
        return _Block(stat, values if need_grad else None, deriv)
    values = _set_excluded_(values, excl, 0.0)
    row_sums = values @ col_w if col_w is not None else values.sum(1)
    stat = (row_sums * row_w[start:stop]).sum() if row_w is not None else row_sums.sum()
    if deriv is not None:
        deriv = _set_excluded_(deriv, excl, 0.0)
        if col_w is not None:
            deriv = deriv.mul_(col_w[None, :])
        if row_w is not None:
            deriv = deriv.mul_(row_w[start:stop, None])
    return _Block(stat, None, deriv)


class _PairKernelMean(torch.autograd.Function):
    """Weighted mean over pairs (i, j), j != exclude[i], of a kernel of ||x_i - y_j||^2.

    The forward pass keeps the gradient coefficients of every block when the whole pair matrix
    fits in ``_CACHE_BUDGET`` elements (then the backward pass costs two matrix products, as a
    linear layer's does); otherwise the backward pass recomputes them block by block.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x_or_rows: Tensor,
        y: Tensor,
        row_w: Tensor | None,
        col_w: Tensor | None,
        exclude: Tensor,
        kernel: PairKernel,
        chunk: int,
        unit: bool,
    ) -> Tensor:
        rows_mode = not x_or_rows.is_floating_point()
        x = y[x_or_rows] if rows_mode else x_or_rows
        m, n = x.shape[0], y.shape[0]
        need_grad = any(ctx.needs_input_grad[:2])  # type: ignore[attr-defined]
        cache = need_grad and m * n <= _CACHE_BUDGET
        with autocast_disabled(x.device.type), torch.no_grad():
            x_sq = _sq_norms(x)
            y_sq = _sq_norms(y)
            norm = _pair_normalizer(row_w, col_w, exclude, m, n, x)
            has_pairs = norm > 0
            blocks = [
                _eval_block(
                    kernel,
                    x,
                    x_sq,
                    y,
                    y_sq,
                    row_w,
                    col_w,
                    exclude,
                    start,
                    min(start + chunk, m),
                    cache,
                )
                for start in range(0, m, chunk)
            ]
            stats = torch.stack([b.stat for b in blocks])
            if kernel.log_mean_exp:
                lse = torch.logsumexp(stats, dim=0)
                stat = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
                out = torch.where(has_pairs, stat - torch.log(norm.clamp_min(1e-30)), 0.0)
            else:
                stat = norm
                out = torch.where(has_pairs, stats.sum() / norm.clamp_min(1e-30), 0.0)
        ctx.save_for_backward(x_or_rows, y, row_w, col_w, exclude, stat, has_pairs)  # type: ignore[arg-type]
        ctx.kernel = kernel  # type: ignore[attr-defined]
        ctx.chunk = chunk  # type: ignore[attr-defined]
        ctx.unit = unit  # type: ignore[attr-defined]
        ctx.blocks = blocks if cache else None  # type: ignore[attr-defined]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x_or_rows, y, row_w, col_w, exclude, stat, has_pairs = ctx.saved_tensors
        kernel: PairKernel = ctx.kernel
        chunk: int = ctx.chunk
        # For rows that come out of unit_rows, the radial parts (coef row/column sums times the
        # point itself) are annihilated by unit_rows' backward: skip those (n, d) passes.
        radial = not ctx.unit
        cached: list[_Block] | None = ctx.blocks
        ctx.blocks = None
        rows_mode = not x_or_rows.is_floating_point()
        x = y[x_or_rows] if rows_mode else x_or_rows
        need_y = ctx.needs_input_grad[1]
        need_x = need_y if rows_mode else ctx.needs_input_grad[0]
        m = x.shape[0]
        single = m <= chunk
        with autocast_disabled(x.device.type):
            grad_x = (torch.empty_like(x) if single else torch.zeros_like(x)) if need_x else None
            grad_y: Tensor | None = None
            x_sq = _sq_norms(x) if cached is None else x.new_empty(0)
            y_sq = _sq_norms(y) if cached is None else y.new_empty(0)
            scale = 2.0 * grad_out * has_pairs.to(x.dtype)
            col_sums: Tensor | None = None
            for index, start in enumerate(range(0, m, chunk)):
                stop = min(start + chunk, m)
                block = (
                    cached[index]
                    if cached is not None
                    else _eval_block(
                        kernel, x, x_sq, y, y_sq, row_w, col_w, exclude, start, stop, True
                    )
                )
                if kernel.log_mean_exp:
                    assert block.values is not None
                    coef = block.values.sub_(stat).exp_()
                    coef = (
                        coef.mul_(block.deriv)
                        if block.deriv is not None
                        else coef.mul_(-kernel.param)
                    )
                    coef = coef.mul_(scale)
                else:
                    assert block.deriv is not None
                    coef = block.deriv.mul_(scale / stat.clamp_min(1e-30))
                xc = x[start:stop]
                if grad_x is not None:
                    if radial:
                        grad_x[start:stop] = coef.sum(1, keepdim=True) * xc - coef @ y
                    else:
                        torch.mm(coef, y, out=grad_x[start:stop]).neg_()
                if need_y:
                    # Accumulate -coef^T x in place; the radial part is added once at the end.
                    if grad_y is None:
                        grad_y = (coef.T @ xc).neg_()
                    else:
                        grad_y.addmm_(coef.T, xc, alpha=-1.0)
                    if radial:
                        col_sums = coef.sum(0) if col_sums is None else col_sums + coef.sum(0)
            if grad_y is not None and col_sums is not None:
                grad_y.addcmul_(col_sums[:, None], y)
            if rows_mode:
                if grad_y is not None and grad_x is not None:
                    # index_add_: on the CPU ~15x faster than index_put_(accumulate=True).
                    grad_y.index_add_(0, x_or_rows, grad_x)
                return None, grad_y, None, None, None, None, None, None
        return grad_x, grad_y, None, None, None, None, None, None


def pair_kernel_mean(
    x: Tensor,
    y: Tensor,
    kernel: PairKernel,
    exclude: Tensor | None = None,
    row_weights: Tensor | None = None,
    col_weights: Tensor | None = None,
    chunk_size: int | None = None,
    unit_rows_input: bool = False,
) -> Tensor:
    """Weighted mean of ``kernel(||x_i - y_j||^2)`` over pairs, chunked in memory.

    The mean is ``sum_ij a_i b_j K_ij / sum_ij a_i b_j`` over pairs with ``j != exclude[i]``;
    log-mean-exp kernels return ``log`` of that mean of ``exp(g)`` instead. With no pair of
    positive weight the result is 0 (and so is its gradient). Inputs are used as given (no
    normalization); they are cast to float32 (float64 stays) with autocast disabled. Weights
    are treated as constants (no gradient).

    Args:
        x: Row points ``(m, d)``, or an int64 ``(m,)`` index: the rows ``y[x]`` (then the
            gradient of those rows is added to ``y``'s without a ``(n, d)`` scatter buffer).
        y: Column points ``(n, d)``.
        kernel: The kernel.
        exclude: ``(m,)`` int64 column index excluded for each row (``-1``: none).
        row_weights: ``(m,)`` non-negative row weights ``a`` (default ones).
        col_weights: ``(n,)`` non-negative column weights ``b`` (default ones).
        chunk_size: Rows per block; default keeps a block near 4M elements (32M on CUDA).
        unit_rows_input: Promise that ``x`` and ``y`` are outputs of :func:`unit_rows` (their
            only path back to the parameters). The backward pass then omits the radial
            gradient components, which ``unit_rows``' backward removes anyway.

    Returns:
        A scalar tensor.
    """
    dtype = compute_dtype(y)
    xf = x.to(dtype) if x.is_floating_point() else x.long()
    yf = y.to(dtype)
    m, n = x.shape[0], y.shape[0]
    if exclude is None:
        exclude = torch.full((m,), -1, dtype=torch.long, device=x.device)
    a = None if row_weights is None else row_weights.detach().to(dtype)
    b = None if col_weights is None else col_weights.detach().to(dtype)
    chunk = _chunk_size(m, n, chunk_size, y.device.type)
    out: Tensor = _PairKernelMean.apply(xf, yf, a, b, exclude, kernel, chunk, unit_rows_input)
    return out


def _prepare(points: Tensor, normalize: bool, name: str = "points") -> Tensor:
    check_matrix(points, name)
    dtype = compute_dtype(points)
    with autocast_disabled(points.device.type):
        pts = points.to(dtype)
        return unit_rows(pts) if normalize else pts


def hyperspherical_energy(
    points: Tensor,
    kernel: KernelName = "riesz",
    s: float = 1.0,
    t: float = 2.0,
    eps: float = DEFAULT_EPS,
    weights: Tensor | None = None,
    normalize: bool = True,
    chunk_size: int | None = None,
) -> Tensor:
    """Hyperspherical energy: mean of a kernel over ordered pairs ``i != j``.

    ``E = sum_{i != j} a_i a_j K(v_i, v_j) / sum_{i != j} a_i a_j`` with

    * Riesz (``kernel="riesz"``): ``K = ||v_i - v_j||^-s`` for ``s > 0``,
      ``-||v_i - v_j||^-s`` for ``s < 0`` and ``log(1 / ||v_i - v_j||)`` for ``s = 0``;
    * log (``kernel="log"``): the ``s = 0`` case;
    * Gaussian (``kernel="gaussian"``): ``E = log mean_{i != j} exp(-t ||v_i - v_j||^2)``
      (Wang & Isola's uniformity, a log-mean-exp instead of a plain mean).

    Lower energy means more uniform points. Memory is ``O(n * chunk)`` in forward and backward.

    Args:
        points: ``(n, d)`` points, ``n >= 2``; L2-normalized here when ``normalize``.
        kernel: Kernel family.
        s: Riesz exponent.
        t: Gaussian temperature.
        eps: Distance floor: closer pairs count as at distance ``eps``.
        weights: Optional ``(n,)`` non-negative point weights ``a`` (0 drops a point).
        normalize: Whether to L2-normalize the rows first.
        chunk_size: Rows per block (default: automatic).

    Returns:
        Scalar energy (float32, or float64 for float64 input).

    Raises:
        ValueError: On bad shapes, non-finite input, fewer than two points or bad parameters.

    Example:
        >>> import torch
        >>> hyperspherical_energy(torch.eye(3), kernel="riesz", s=2.0)
        tensor(0.5000)
    """
    pair_kernel = make_kernel(kernel, s=s, t=t, eps=eps)
    pts = _prepare(points, normalize)
    n = pts.shape[0]
    if n < 2:
        raise ValueError(f"hyperspherical energy needs at least 2 points, got {n}")
    if weights is not None and weights.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), got {tuple(weights.shape)}")
    diag = torch.arange(n, device=pts.device)
    return pair_kernel_mean(pts, pts, pair_kernel, diag, weights, weights, chunk_size, normalize)


def riesz_energy(
    points: Tensor,
    s: float = 1.0,
    eps: float = DEFAULT_EPS,
    normalize: bool = True,
    chunk_size: int | None = None,
) -> Tensor:
    """Riesz s-energy, mean over pairs ``i != j`` (``s = 0``: log energy).

    Example:
        >>> import torch
        >>> round(float(riesz_energy(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), s=1.0)), 4)
        0.5
    """
    return hyperspherical_energy(
        points, "riesz", s=s, eps=eps, normalize=normalize, chunk_size=chunk_size
    )


def log_energy(
    points: Tensor, eps: float = DEFAULT_EPS, normalize: bool = True, chunk_size: int | None = None
) -> Tensor:
    """Logarithmic energy, mean over pairs of ``log(1 / ||v_i - v_j||)``.

    Example:
        >>> import torch
        >>> round(float(log_energy(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))), 4)
        -0.6931
    """
    return hyperspherical_energy(points, "log", eps=eps, normalize=normalize, chunk_size=chunk_size)


def gaussian_energy(
    points: Tensor,
    t: float = 2.0,
    normalize: bool = True,
    chunk_size: int | None = None,
) -> Tensor:
    """Gaussian uniformity ``log mean_{i != j} exp(-t ||v_i - v_j||^2)`` (Wang & Isola).

    Example:
        >>> import torch
        >>> round(float(gaussian_energy(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), t=2.0)), 4)
        -8.0
    """
    return hyperspherical_energy(
        points, "gaussian", t=t, normalize=normalize, chunk_size=chunk_size
    )


def energy_rows(
    points: Tensor,
    rows: Tensor,
    row_weights: Tensor | None = None,
    kernel: KernelName = "riesz",
    s: float = 1.0,
    t: float = 2.0,
    eps: float = DEFAULT_EPS,
    normalize: bool = True,
    chunk_size: int | None = None,
) -> Tensor:
    """Energy of selected rows against all points: ``O(len(rows) * n * d)``, like a CE head.

    ``E = sum_k a_k sum_{j != rows[k]} K(v_{rows[k]}, v_j) / sum_k a_k (n - 1)``. With ``rows``
    the labels of a batch and ``a_k = 1 / count(label_k)`` this is exactly the mean energy row
    of the classes present in the batch, with no host synchronisation. Gradients reach both the
    selected rows and all other points.

    Args:
        points: ``(n, d)`` points.
        rows: ``(m,)`` int64 row indices (repeats allowed).
        row_weights: ``(m,)`` non-negative weights (default ones).
        kernel: Kernel family, as in :func:`hyperspherical_energy`.
        s: Riesz exponent.
        t: Gaussian temperature.
        eps: Distance floor.
        normalize: Whether to L2-normalize the rows first.
        chunk_size: Rows per block.

    Returns:
        Scalar energy.

    Example:
        >>> import torch
        >>> float(energy_rows(torch.eye(3), torch.tensor([0]), s=2.0))
        0.5
    """
    pair_kernel = make_kernel(kernel, s=s, t=t, eps=eps)
    pts = _prepare(points, normalize)
    if pts.shape[0] < 2:
        raise ValueError(f"energy_rows needs at least 2 points, got {pts.shape[0]}")
    if rows.ndim != 1 or rows.is_floating_point():
        raise ValueError(f"rows must be a 1-D integer tensor, got {rows.dtype} {tuple(rows.shape)}")
    rows = rows.long()
    return pair_kernel_mean(
        rows, pts, pair_kernel, rows, row_weights, None, chunk_size, unit_rows_input=normalize
    )


def pairwise_distances(x: Tensor, y: Tensor, eps: float = 0.0) -> Tensor:
    """Euclidean distances ``||x_i - y_j||`` via the Gram trick, clamped below at ``eps``.

    Args:
        x: ``(m, d)``.
        y: ``(n, d)``.
        eps: Lower clamp (keeps the square root differentiable when > 0).

    Returns:
        ``(m, n)`` distances in the compute dtype.
    """
    d2 = ((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T).clamp_min(eps * eps)
    return torch.sqrt(d2)


def min_separation(points: Tensor, normalize: bool = True, chunk_size: int | None = None) -> Tensor:
    """Minimum pairwise distance ``min_{i != j} ||v_i - v_j||`` (MHS measure, maximized).

    Computed chunk by chunk without gradient tracking; use :func:`soft_separation` as a loss.

    Example:
        >>> import torch
        >>> round(float(min_separation(torch.eye(2))), 4)
        1.4142
    """
    pts = _prepare(points, normalize)
    n = pts.shape[0]
    if n < 2:
        raise ValueError(f"min_separation needs at least 2 points, got {n}")
    chunk = _chunk_size(n, n, chunk_size, pts.device.type)
    best = torch.full((), math.inf, dtype=pts.dtype, device=pts.device)
    with torch.no_grad(), autocast_disabled(pts.device.type):
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            dist = pairwise_distances(pts[start:stop], pts)
            idx = torch.arange(start, stop, device=pts.device)
            dist[idx - start, idx] = math.inf
            best = torch.minimum(best, dist.min())
    return best


def soft_separation(
    points: Tensor,
    t: float = 0.05,
    eps: float = DEFAULT_EPS,
    normalize: bool = True,
    chunk_size: int | None = None,
) -> Tensor:
    """Smooth minimum pairwise distance: ``-t * log sum_{i<j} exp(-||v_i - v_j|| / t)``.

    A differentiable lower bound of :func:`min_separation` that tends to it as ``t -> 0``
    (gap at most ``t * log(n(n-1)/2)``). Maximize it, or minimize its negative, for MHS.

    Args:
        points: ``(n, d)`` points, ``n >= 2``.
        t: Temperature (> 0), in units of distance.
        eps: Distance floor.
        normalize: Whether to L2-normalize first.
        chunk_size: Rows per block.

    Returns:
        Scalar smooth minimum distance.

    Example:
        >>> import torch
        >>> round(float(soft_separation(torch.eye(2), t=0.01)), 4)
        1.4142
    """
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"softmin temperature t must be > 0, got {t}")
    pts = _prepare(points, normalize)
    n = pts.shape[0]
    if n < 2:
        raise ValueError(f"soft_separation needs at least 2 points, got {n}")
    diag = torch.arange(n, device=pts.device)
    log_mean = pair_kernel_mean(
        pts, pts, PairKernel("softmin", float(t), eps), diag, None, None, chunk_size, normalize
    )
    # log sum over unordered pairs = log mean over ordered pairs + log(n (n - 1) / 2)
    return -t * (log_mean + math.log(n * (n - 1) / 2.0))


def gram_log_det(
    points: Tensor,
    gamma: float = 1.0,
    jitter: float = 1e-4,
    normalize: bool = True,
) -> Tensor:
    """Log-determinant of the Gaussian Gram matrix ``G_ij = exp(-gamma ||v_i - v_j||^2)``.

    The MGD measure (maximized). ``jitter * I`` is added so duplicates give a large negative
    but finite value. Needs the full ``(n, n)`` matrix: meant for up to a few thousand points.

    Args:
        points: ``(n, d)`` points.
        gamma: Kernel bandwidth (> 0).
        jitter: Diagonal jitter (> 0).
        normalize: Whether to L2-normalize first.

    Returns:
        Scalar ``log det(G + jitter I)``.

    Example:
        >>> import torch
        >>> round(float(gram_log_det(torch.eye(3), gamma=1.0, jitter=1e-4)), 3)
        -0.051
    """
    if not (math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if not (math.isfinite(jitter) and jitter > 0):
        raise ValueError(f"jitter must be > 0, got {jitter}")
    pts = _prepare(points, normalize)
    n = pts.shape[0]
    with autocast_disabled(pts.device.type):
        d2 = (pts * pts).sum(1)[:, None] + (pts * pts).sum(1)[None, :] - 2.0 * pts @ pts.T
        gram = torch.exp(-gamma * d2.clamp_min(0.0))
        gram = 0.5 * (gram + gram.T) + jitter * torch.eye(n, dtype=pts.dtype, device=pts.device)
        chol, _ = torch.linalg.cholesky_ex(gram)
        return 2.0 * torch.log(torch.diagonal(chol)).sum()
