"""Pair kernels of the hyperspherical energies: Riesz, log, Gaussian; MHS's smooth minimum."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

KernelName = Literal["riesz", "log", "gaussian"]

DEFAULT_EPS = 1e-4
"""Default distance floor: pairs closer than this count as if at this distance."""

MAX_HELD_PAIRS = 1 << 26
"""Largest pair block (elements; 256 MiB in float32) held at once: the pair sums keep it from
the forward to the backward pass, the fused node computes it whole; beyond it, blocks are
walked in chunks."""


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
        if self.kind == "riesz" and self.param == 1.0:  # the default: rsqrt, no pow
            return d2.clamp_min(eps2).rsqrt()
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
        if self.kind == "riesz" and self.param == 1.0:  # the default: rsqrt, no pow
            value = clamped.rsqrt_()  # d^-1
            deriv = value * value * value  # -2 f' = d^-3
            return value, torch.where(active, deriv.mul_(-0.5), 0.0)
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
