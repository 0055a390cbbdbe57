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

Examples:
    >>> import torch
    >>> from hug_plugins.functional.uniformity import riesz_energy
    >>> points = torch.randn(10, 3, requires_grad=True)
    >>> energy = riesz_energy(points, s=1.0)
    >>> energy.backward()
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hug_plugins._checks import check_matrix, compute_dtype
from hug_plugins.functional.kernels import DEFAULT_EPS, KernelName, PairKernel, make_kernel
from hug_plugins.functional.pair_sums import (
    autocast_disabled,
    chunk_rows,
    pair_kernel_mean,
    unit_rows,
)

__all__ = [
    "DEFAULT_EPS",
    "KernelName",
    "PairKernel",
    "autocast_disabled",
    "energy_rows",
    "gaussian_energy",
    "gaussian_gram_log_det",
    "gram_log_det",
    "hyperspherical_energy",
    "log_energy",
    "make_kernel",
    "min_separation",
    "pair_kernel_mean",
    "pairwise_distances",
    "riesz_energy",
    "soft_separation",
    "squared_distances",
    "unit_rows",
]


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

    Examples:
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

    Examples:
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

    Examples:
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

    Examples:
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

    Examples:
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


def squared_distances(x: Tensor, y: Tensor, *, unit: bool = False) -> Tensor:
    """Squared distances ``||x_i - y_j||^2`` via the Gram trick, clamped below at 0.

    Args:
        x: ``(m, d)``.
        y: ``(n, d)``.
        unit: Whether the rows are unit vectors (then ``2 - 2 <x_i, y_j>``).

    Returns:
        ``(m, n)`` squared distances.

    Examples:
        >>> squared_distances(torch.eye(2), torch.eye(2)).tolist()
        [[0.0, 2.0], [2.0, 0.0]]
    """
    if unit:
        return (2.0 - 2.0 * x @ y.T).clamp_min(0.0)
    return ((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T).clamp_min(0.0)


def gaussian_gram_log_det(
    sq_dists: Tensor, gamma: float, jitter: float, present: Tensor | None = None
) -> Tensor:
    """``log det(G + jitter I)`` of ``G_ij = exp(-gamma d_ij^2)`` from the squared distances.

    With ``present`` (``(n,)`` 0/1 weights) only the present points count, without indexing:
    absent rows and columns become identity rows, whose ``log(1 + jitter)`` is removed.

    Examples:
        >>> round(float(gaussian_gram_log_det(torch.zeros(1, 1), 1.0, 1e-4)), 6)
        0.0001
    """
    gram = torch.exp(-gamma * sq_dists)
    n = sq_dists.shape[0]
    eye = torch.eye(n, dtype=sq_dists.dtype, device=sq_dists.device)
    if present is not None:
        gram = gram * (present[:, None] * present[None, :]) + eye * (1.0 - present)[:, None]
    gram = 0.5 * (gram + gram.T) + jitter * eye
    chol, _ = torch.linalg.cholesky_ex(gram)
    logdet = 2.0 * torch.log(torch.diagonal(chol)).sum()
    if present is None:
        return logdet
    return logdet - (1.0 - present).sum() * math.log1p(jitter)


def pairwise_distances(x: Tensor, y: Tensor, eps: float = 0.0) -> Tensor:
    """Euclidean distances ``||x_i - y_j||`` via the Gram trick, clamped below at ``eps``.

    Args:
        x: ``(m, d)``.
        y: ``(n, d)``.
        eps: Lower clamp (keeps the square root differentiable when > 0).

    Returns:
        ``(m, n)`` distances in the compute dtype.
    """
    return torch.sqrt(squared_distances(x, y).clamp_min(eps * eps))


def min_separation(points: Tensor, normalize: bool = True, chunk_size: int | None = None) -> Tensor:
    """Minimum pairwise distance ``min_{i != j} ||v_i - v_j||`` (MHS measure, maximized).

    Computed chunk by chunk without gradient tracking; use :func:`soft_separation` as a loss.

    Examples:
        >>> import torch
        >>> round(float(min_separation(torch.eye(2))), 4)
        1.4142
    """
    pts = _prepare(points, normalize)
    n = pts.shape[0]
    if n < 2:
        raise ValueError(f"min_separation needs at least 2 points, got {n}")
    chunk = chunk_rows(n, n, chunk_size, pts.device.type)
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

    Examples:
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

    Examples:
        >>> import torch
        >>> round(float(gram_log_det(torch.eye(3), gamma=1.0, jitter=1e-4)), 3)
        -0.051
    """
    if not (math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if not (math.isfinite(jitter) and jitter > 0):
        raise ValueError(f"jitter must be > 0, got {jitter}")
    pts = _prepare(points, normalize)
    with autocast_disabled(pts.device.type):
        return gaussian_gram_log_det(squared_distances(pts, pts), gamma, jitter)
