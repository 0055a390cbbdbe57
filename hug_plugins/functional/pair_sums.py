"""Chunked, differentiable weighted means of a kernel over point pairs, and row normalization.

The pair sums behind every energy of the package (:func:`pair_kernel_mean`): a custom autograd
function that walks the pair matrix in row chunks in both passes, so memory is ``O(chunk * n)``
instead of ``O(n^2)``, with no host synchronisation; plus :func:`unit_rows` (L2 normalization
with a fused backward) and :func:`autocast_disabled`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from hug_plugins._checks import compute_dtype
from hug_plugins.functional.kernels import MAX_HELD_PAIRS, PairKernel

_PAIR_BUDGET = {"cpu": 1 << 22, "cuda": 1 << 25}
"""Elements of one (chunk x n) pair block: 16 MiB fp32 on the CPU (cache-friendly), 128 MiB on
CUDA (large blocks keep the matrix products efficient)."""


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


def chunk_rows(rows: int, cols: int, chunk_size: int | None, device: str = "cpu") -> int:
    """Rows per block: the given size, one block when the backward pass would cache every block
    anyway (``rows * cols <= MAX_HELD_PAIRS``), else the device's block budget."""
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return chunk_size
    if rows * cols <= MAX_HELD_PAIRS:
        return max(1, rows)
    budget = _PAIR_BUDGET.get(device, _PAIR_BUDGET["cpu"])
    return max(1, min(rows, budget // max(cols, 1)))


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

    Examples:
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
    fits in ``MAX_HELD_PAIRS`` elements (then the backward pass costs two matrix products, as a
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
        x = y.index_select(0, x_or_rows) if rows_mode else x_or_rows
        m, n = x.shape[0], y.shape[0]
        need_grad = any(ctx.needs_input_grad[:2])  # type: ignore[attr-defined]
        cache = need_grad and m * n <= MAX_HELD_PAIRS
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
        x = y.index_select(0, x_or_rows) if rows_mode else x_or_rows
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
    if torch.compiler.is_compiling():
        # torch.compile traces plain autograd and fuses the block itself (no chunking).
        return _composed_pair_kernel_mean(xf, yf, a, b, exclude, kernel)
    chunk = chunk_rows(m, n, chunk_size, y.device.type)
    out: Tensor = _PairKernelMean.apply(xf, yf, a, b, exclude, kernel, chunk, unit_rows_input)
    return out


def _composed_pair_kernel_mean(
    x_or_rows: Tensor,
    y: Tensor,
    row_w: Tensor | None,
    col_w: Tensor | None,
    exclude: Tensor,
    kernel: PairKernel,
) -> Tensor:
    """The same mean as :class:`_PairKernelMean`, in differentiable operations on the whole
    ``(m, n)`` block: what ``torch.compile`` traces (and fuses) in place of the custom node."""
    x = y.index_select(0, x_or_rows) if not x_or_rows.is_floating_point() else x_or_rows
    with autocast_disabled(x.device.type):
        d2 = ((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T).clamp_min(0.0)
        values = kernel.value(d2)
        kept = (exclude < 0).to(values.dtype)[:, None]
        weights = torch.ones_like(values).scatter(1, exclude.clamp_min(0)[:, None], kept)
        if row_w is not None:
            weights = weights * row_w[:, None]
        if col_w is not None:
            weights = weights * col_w[None, :]
        norm = weights.sum()
        has_pairs = norm > 0
        if kernel.log_mean_exp:
            stat = torch.logsumexp((values + torch.log(weights)).flatten(), dim=0)
            stat = torch.where(torch.isfinite(stat), stat, torch.zeros_like(stat))
            return torch.where(has_pairs, stat - torch.log(norm.clamp_min(1e-30)), 0.0)
        return torch.where(has_pairs, (values * weights).sum() / norm.clamp_min(1e-30), 0.0)
