"""Class proxies: constructors of uniform configurations and the :class:`ProxyHead` module.

Constructors (all return ``(C, d)`` unit rows):

* :func:`simplex_etf`: the regular simplex, pairwise cosine ``-1/(C-1)``, for ``C <= d + 1``
  (the energy minimizer by Theorem 1 of the HUG paper);
* :func:`cross_polytope`: ``+-e_k``, ``C = 2d`` (the minimizer by Theorem 2);
* :func:`minimize_energy`: a seeded energy minimizer for any ``C, d`` (L-BFGS on the sphere,
  by the scale-invariant parametrization ``v = u / ||u||``, with a convergence criterion).

Reference:
    Liu, Yu, Weller, Schölkopf. "Generalizing and Decoupling Neural Collapse via Hyperspherical
    Uniformity Gap." ICLR 2023. https://arxiv.org/abs/2303.06484

Examples:
    >>> import torch
    >>> from hug_plugins.proxies import ProxyHead
    >>> head = ProxyHead(num_classes=10, dim=16, mode="static_optimized")
    >>> logits = head(torch.randn(4, 16))
    >>> logits.shape
    torch.Size([4, 10])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hug_plugins._checks import check_matrix
from hug_plugins.functional.uniformity import KernelName, hyperspherical_energy

ProxyMode = Literal["learnable", "static_random", "static_optimized", "partial"]


def _generator(seed: int) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def _random_rotation(dim: int, seed: int, dtype: torch.dtype) -> Tensor:
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=_generator(seed), dtype=torch.float64))
    rotation: Tensor = q * torch.sign(torch.diagonal(r))[None, :]
    return rotation.to(dtype)


def random_proxies(num_classes: int, dim: int, seed: int = 0) -> Tensor:
    """``C`` i.i.d. uniform points on the sphere ``S^{d-1}`` (normalized Gaussians), seeded."""
    _check_sizes(num_classes, dim)
    return F.normalize(torch.randn(num_classes, dim, generator=_generator(seed)), dim=1)


def simplex_etf(num_classes: int, dim: int, seed: int | None = None) -> Tensor:
    """Vertices of a regular simplex on ``S^{d-1}``: unit rows with pairwise cosine ``-1/(C-1)``.

    Args:
        num_classes: ``C >= 2`` vertices.
        dim: Ambient dimension ``d >= C - 1``.
        seed: If given, apply a seeded random rotation (otherwise a fixed embedding).

    Returns:
        ``(C, d)`` float32 tensor.

    Raises:
        ValueError: If ``C > d + 1`` (no simplex ETF exists) or sizes are invalid.

    Examples:
        >>> w = simplex_etf(4, 3)
        >>> round(float(w[0] @ w[1]), 4)
        -0.3333
    """
    _check_sizes(num_classes, dim)
    if num_classes > dim + 1:
        raise ValueError(
            f"a simplex ETF of {num_classes} vertices needs dim >= {num_classes - 1}, got {dim}; "
            "use minimize_energy for C > d + 1"
        )
    c = num_classes
    centred = torch.eye(c, dtype=torch.float64) - 1.0 / c
    # Orthonormal coordinates of the (C-1)-dim subspace spanned by the centred basis.
    u, _, _ = torch.linalg.svd(centred)
    coords = centred @ u[:, : c - 1]
    vertices = torch.zeros(c, dim, dtype=torch.float64)
    vertices[:, : c - 1] = coords
    vertices = F.normalize(vertices, dim=1)
    if seed is not None:
        vertices = vertices @ _random_rotation(dim, seed, torch.float64)
    return vertices.float()


def cross_polytope(dim: int, seed: int | None = None) -> Tensor:
    """The ``2d`` vertices ``+-e_k`` of the cross-polytope (orthoplex) on ``S^{d-1}``.

    Args:
        dim: Dimension ``d >= 1``.
        seed: If given, apply a seeded random rotation.

    Returns:
        ``(2d, d)`` float32 tensor: rows ``e_0, -e_0, e_1, -e_1, ...``.

    Examples:
        >>> cross_polytope(2)
        tensor([[ 1.,  0.],
                [-1., -0.],
                [ 0.,  1.],
                [-0., -1.]])
    """
    _check_sizes(2 * dim, dim)
    eye = torch.eye(dim, dtype=torch.float64)
    vertices = torch.stack([eye, -eye], dim=1).reshape(2 * dim, dim)
    if seed is not None:
        vertices = vertices @ _random_rotation(dim, seed, torch.float64)
    return vertices.float()


@dataclass(frozen=True)
class EnergyMinimizationResult:
    """Outcome of :func:`minimize_energy`.

    Attributes:
        points: ``(C, d)`` unit rows (float32).
        energy: Final energy (mean over pairs).
        iterations: L-BFGS iterations run.
        converged: Whether the relative energy change fell below ``tol``.
    """

    points: Tensor
    energy: float
    iterations: int
    converged: bool


def minimize_energy(
    num_classes: int,
    dim: int,
    kernel: KernelName = "riesz",
    s: float = 1.0,
    t: float = 2.0,
    seed: int = 0,
    max_iter: int = 2000,
    tol: float = 1e-12,
    init: Tensor | None = None,
) -> EnergyMinimizationResult:
    """Minimizes the hyperspherical energy of ``C`` points on ``S^{d-1}``.

    Optimizes unconstrained ``u`` with ``v = u / ||u||`` (so every iterate is on the sphere:
    a projected, scale-invariant gradient method) by L-BFGS with strong-Wolfe line search, in
    float64, from a seeded random start. Stops when the relative energy change of an outer
    round of 20 iterations is below ``tol`` or after ``max_iter`` iterations.

    Args:
        num_classes: Number of points ``C >= 2``.
        dim: Dimension ``d >= 2``.
        kernel: ``"riesz"``, ``"log"`` or ``"gaussian"``.
        s: Riesz exponent.
        t: Gaussian temperature.
        seed: Seed of the random start.
        max_iter: Iteration budget.
        tol: Relative energy change that counts as converged.
        init: Optional ``(C, d)`` starting configuration instead of the random start.

    Returns:
        :class:`EnergyMinimizationResult`.

    Examples:
        >>> result = minimize_energy(4, 3, s=1.0)
        >>> result.converged
        True
    """
    _check_sizes(num_classes, dim)
    if init is not None:
        check_matrix(init, "init", dim=dim)
        start = init.detach().to(torch.float64).clone()
    else:
        start = torch.randn(num_classes, dim, generator=_generator(seed), dtype=torch.float64)
    u = nn.Parameter(F.normalize(start, dim=1))
    optimizer = torch.optim.LBFGS(
        [u],
        lr=1.0,
        max_iter=20,
        history_size=50,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-14,
        tolerance_change=1e-16,
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        energy = hyperspherical_energy(u, kernel=kernel, s=s, t=t)
        energy.backward()  # type: ignore[no-untyped-call]
        return energy

    previous = math.inf
    iterations = 0
    converged = False
    while iterations < max_iter:
        optimizer.step(closure)  # type: ignore[no-untyped-call]
        iterations += 20
        with torch.no_grad():
            u.copy_(F.normalize(u, dim=1))
            current = float(hyperspherical_energy(u, kernel=kernel, s=s, t=t))
        if abs(previous - current) <= tol * max(abs(current), 1e-30):
            converged = True
            break
        previous = current
    points = F.normalize(u.detach(), dim=1)
    return EnergyMinimizationResult(points.float(), current, iterations, converged)


def _check_sizes(num_classes: int, dim: int) -> None:
    if not (isinstance(num_classes, int) and num_classes >= 2):
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if not (isinstance(dim, int) and dim >= 1):
        raise ValueError(f"dim must be an int >= 1, got {dim!r}")


class ProxyHead(nn.Module):
    """``C`` class proxies with scaled-cosine logits and nearest-proxy prediction.

    Modes:

    * ``"learnable"``: proxies are a free parameter (random init, seeded).
    * ``"static_random"``: fixed random unit proxies (a buffer, never trained).
    * ``"static_optimized"``: fixed energy-minimized proxies (:func:`minimize_energy`; a simplex
      ETF when ``C <= d + 1``; the cross-polytope when ``C = 2d``).
    * ``"partial"`` (partially learnable): ``w_c = normalize(w0_c + r_c)`` with ``w0`` the
      frozen optimized configuration and ``r_c`` a learnable residual, zero at start, whose norm
      is softly bounded by ``partial_radius`` through ``r = radius * tanh(||q||) q / ||q||``.
      The proxies can adapt to the data but never drift far from a uniform configuration.

    ``forward`` returns logits ``scale * cos(x, w_c)``, so accuracy metrics and adversarial
    attacks can treat the head as a classifier; ``predict`` is the nearest proxy.

    Args:
        num_classes: Number of classes ``C >= 2``.
        dim: Feature dimension ``d``.
        mode: Proxy mode (above).
        scale: Logit scale (> 0), like a cosine-softmax temperature.
        partial_radius: Bound on the residual norm in ``"partial"`` mode (> 0).
        seed: Seed of the random or optimized initialization.
        init: Optional ``(C, d)`` initial proxies (any mode; normalized here).

    Raises:
        ValueError: On invalid arguments or duplicate proxies in ``init``.

    Examples:
        >>> import torch
        >>> head = ProxyHead(3, 2, mode="learnable")
        >>> head.predict(torch.randn(5, 2)).shape
        torch.Size([5])
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        mode: ProxyMode = "learnable",
        scale: float = 16.0,
        partial_radius: float = 0.5,
        seed: int = 0,
        init: Tensor | None = None,
    ) -> None:
        super().__init__()
        _check_sizes(num_classes, dim)
        if mode not in ("learnable", "static_random", "static_optimized", "partial"):
            raise ValueError(
                "mode must be 'learnable', 'static_random', 'static_optimized' or 'partial', "
                f"got {mode!r}"
            )
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be > 0, got {scale}")
        if not (math.isfinite(partial_radius) and partial_radius > 0):
            raise ValueError(f"partial_radius must be > 0, got {partial_radius}")
        self.num_classes = num_classes
        self.dim = dim
        self.mode = mode
        self.scale = float(scale)
        self.partial_radius = float(partial_radius)
        if init is not None:
            check_matrix(init, "init", dim=dim)
            if init.shape[0] != num_classes:
                raise ValueError(f"init must have {num_classes} rows, got {init.shape[0]}")
            base = F.normalize(init.detach().float(), dim=1)
            _check_distinct(base)
        elif mode in ("learnable", "static_random"):
            base = random_proxies(num_classes, dim, seed)
        else:
            base = optimized_proxies(num_classes, dim, seed=seed)
        if mode == "learnable":
            self.weight = nn.Parameter(base.clone())
        elif mode == "partial":
            self.register_buffer("base", base.clone())
            self.residual = nn.Parameter(torch.zeros(num_classes, dim))
        else:
            self.register_buffer("base", base.clone())

    @property
    def proxies(self) -> Tensor:
        """The current ``(C, d)`` proxies (unnormalized for ``"learnable"``; differentiable)."""
        if self.mode == "learnable":
            weight: Tensor = self.weight
            return weight
        base: Tensor = self.get_buffer("base")
        if self.mode == "partial":
            residual: Tensor = self.residual
            norm = residual.norm(dim=1, keepdim=True)
            # tanh(n) / n, with its series near 0 so the zero-initialized residual gets gradient.
            safe = norm.clamp_min(1e-4)
            ratio = torch.where(norm < 1e-4, 1.0 - norm * norm / 3.0, torch.tanh(safe) / safe)
            partial: Tensor = base + self.partial_radius * ratio * residual
            return partial
        return base

    def normalized_proxies(self) -> Tensor:
        """The unit-norm proxies ``w_hat``."""
        return F.normalize(self.proxies, dim=1, eps=1e-12)

    def forward(self, features: Tensor) -> Tensor:
        """Scaled-cosine logits ``scale * <x_hat, w_hat_c>`` of shape ``(B, C)``."""
        check_matrix(features, "features", dim=self.dim, values=False)  # no sync per batch
        x_hat = F.normalize(features, dim=1, eps=1e-12)
        w_hat = self.normalized_proxies().to(x_hat.dtype)
        return self.scale * x_hat @ w_hat.T

    @torch.no_grad()
    def predict(self, features: Tensor) -> Tensor:
        """Nearest-proxy class (argmax cosine), shape ``(B,)``."""
        return self.forward(features).argmax(dim=1)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, dim={self.dim}, mode={self.mode!r}, "
            f"scale={self.scale}"
        )


def _check_distinct(points: Tensor) -> None:
    dist = torch.cdist(points, points)
    dist.fill_diagonal_(math.inf)
    if bool((dist < 1e-6).any()):
        raise ValueError("init contains duplicate proxies (two rows at the same direction)")


def optimized_proxies(num_classes: int, dim: int, seed: int = 0, s: float = 1.0) -> Tensor:
    """Energy-minimized proxies: simplex ETF if ``C <= d + 1``, cross-polytope if ``C = 2d``,
    else :func:`minimize_energy` (Riesz ``s``) from a seeded random start.

    Examples:
        >>> optimized_proxies(3, 2).shape
        torch.Size([3, 2])
    """
    if num_classes <= dim + 1:
        return simplex_etf(num_classes, dim, seed=seed)
    if num_classes == 2 * dim:
        return cross_polytope(dim, seed=seed)
    return minimize_energy(num_classes, dim, s=s, seed=seed, max_iter=500, tol=1e-9).points
