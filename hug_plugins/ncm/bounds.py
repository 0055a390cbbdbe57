"""Float32 error bounds of the NCM scores and the exact float64 costs they are checked with."""

from __future__ import annotations

import math
import os
from typing import Literal

import torch
from torch import Tensor

Metric = Literal["l2", "cosine"]
Backend = Literal["auto", "faiss", "torch"]
Approximate = Literal["ivf", "hnsw"]

U32 = 2.0**-24
U64 = 2.0**-53
UNIT_TF32 = 2.0**-11
UNIT_BF16 = 2.0**-8
SAFETY = 2.0
DEFAULT_BLOCK_BYTES = 256 << 20
OLD_OPENBLAS_CORES = {"prescott", "core2", "katmai", "coppermine", "northwood", "banias", "atom"}

# --------------------------------------------------------------------------------------------
# Input checks and error bounds
# --------------------------------------------------------------------------------------------


def check_metric(metric: str) -> None:
    if metric not in ("l2", "cosine"):
        raise ValueError(f"metric must be 'l2' or 'cosine', got {metric!r}")


def gamma(n: int, unit: float) -> float:
    nu = n * unit
    return math.inf if nu >= 1.0 else nu / (1.0 - nu)


def torch_unit(device: torch.device) -> float:
    """Unit roundoff of a float32 torch matmul on ``device``."""
    if device.type != "cuda":
        return U32
    precision = torch.get_float32_matmul_precision()
    if precision == "medium":
        return UNIT_BF16
    if precision == "high" or torch.backends.cuda.matmul.allow_tf32:
        return UNIT_TF32
    return U32


def faiss_gpu_unit() -> float:
    return UNIT_TF32 if os.environ.get("NVIDIA_TF32_OVERRIDE", "") == "1" else U32


def row_tolerance(
    q_norm: Tensor, max_mean_norm: float, dim: int, metric: str, unit: float
) -> Tensor:
    """Bound (cost units) on the error of every float32 score of each query row."""
    if metric == "l2":
        return SAFETY * gamma(dim + 8, unit) * (q_norm + max_mean_norm) ** 2
    return torch.full_like(q_norm, SAFETY * gamma(2 * dim + 16, unit))


def direct_cost(q: Tensor, m: Tensor, metric: str) -> Tensor:
    """Float64 cost (smaller is nearer) of paired rows ``q[i]`` and ``m[i]``."""
    q = q.to(torch.float64)
    m = m.to(torch.float64)
    if metric == "l2":
        diff = q - m
        cost: Tensor = (diff * diff).sum(1)
        return cost
    cost = -(q * m).sum(1) / (q.norm(dim=1) * m.norm(dim=1))
    return cost


def check_cosine_rows(x: Tensor, name: str) -> None:
    zero = x.norm(dim=1) == 0
    if bool(zero.any()):
        first = int(zero.nonzero()[0, 0])
        raise ValueError(
            f"{name} has {int(zero.sum())} zero-norm rows (first: {first}); "
            "the cosine metric is undefined for them"
        )
