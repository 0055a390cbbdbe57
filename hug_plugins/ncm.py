"""Scalable, exact nearest-class-mean (NCM) classification and the NC4 check.

NC4 (Papyan, Han & Donoho, 2020) says that in the terminal phase of training the classifier
decides like the nearest-class-mean rule ``argmin_c ||x - mu_c||``. Checking it on real data
means NCM classification of millions of queries against up to a million class means. This
module provides:

* :class:`ClassMeanAccumulator`: streaming class sums and counts (``index_add_`` per batch,
  O(C * d) memory); empty classes are reported, never turned into a zero mean.
* :class:`NearestMeanIndex`: exact (or, on request, approximate) nearest-mean search backed by
  FAISS (GPU flat index when ``faiss.get_num_gpus() > 0``, sharded over all GPUs when there are
  several) or by chunked torch matmul; on the CPU the faster of the two is picked by a one-time
  calibration (see :func:`select_cpu_backend`).
* :class:`NCMClassifier`: accumulator + index.
* :class:`NC4Meter` and :func:`nc4_report`: agreement between the model's decision (linear
  argmax, or nearest proxy for HUG) and NCM, and the accuracy of each, in one pass over the data.

Exactness guarantee:
    The float32 search (FAISS or torch) returns the best two candidates per query. A standard
    forward error bound for a length-``d`` float32 dot product, ``|err| <= gamma_(d+8) *
    (||q|| + max_c ||mu_c||)^2`` with ``gamma_n = n u / (1 - n u)`` and ``u = 2^-24`` (for the
    cosine metric ``|err| <= gamma_(2d+16)``), times a safety factor of 2, bounds the error of
    every float32 score. A query whose float32 margin between its two best classes exceeds twice
    that bound is certified: no other class can be nearer in exact arithmetic. Every other
    query is re-checked: all classes within the bound of its float32 best are re-scored in
    float64 with the direct formula ``sum((x - mu)^2)`` (cosine: ``<x, mu> / (||x|| ||mu||)``),
    exact ties going to the lowest class id. The result therefore equals the float64
    brute-force rule :func:`ncm_reference` (0 disagreements, near ties included); the bound holds
    for any summation order, so it covers blocked BLAS, FMA and GPU GEMMs. On CUDA, torch
    matmuls that allow TF32/bf16 (``torch.get_float32_matmul_precision() != "highest"``) are
    bounded with the matching larger unit roundoff; FAISS GPU flat indexes use FP32 cuBLAS
    GEMMs (``NVIDIA_TF32_OVERRIDE=1`` is honoured by switching to the TF32 unit). The re-check
    uses the means as stored: with ``accum_dtype=torch.float64`` these are the float64 means,
    so the whole pipeline equals the float64 reference computed from the raw features; with the
    default float32 accumulation it is exact for the float32 means.

Reference:
    Papyan, Han, Donoho. "Prevalence of neural collapse during the terminal phase of deep
    learning training." PNAS 2020. https://doi.org/10.1073/pnas.2015509117
    Liu, Yu, Weller, Schölkopf. "Generalizing and Decoupling Neural Collapse via Hyperspherical
    Uniformity Gap." ICLR 2023. https://arxiv.org/abs/2303.06484
    Johnson, Douze, Jégou. "Billion-scale similarity search with GPUs." IEEE TBD 2019.

Example:
    >>> import torch
    >>> feats = torch.tensor([[0.0, 0.1], [0.1, 0.0], [5.0, 5.1], [5.1, 5.0]])
    >>> labels = torch.tensor([0, 0, 1, 1])
    >>> ncm = NCMClassifier(num_classes=2, dim=2, backend="torch").fit(feats, labels)
    >>> ncm.predict(torch.tensor([[0.2, 0.2], [4.0, 4.0]])).tolist()
    [0, 1]
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from hug_plugins._checks import check_labels, check_matrix

__all__ = [
    "ClassMeanAccumulator",
    "NC4Meter",
    "NC4Report",
    "NCMClassifier",
    "NearestMeanIndex",
    "faiss_available",
    "faiss_num_gpus",
    "faiss_openblas_coretype",
    "nc4_report",
    "ncm_reference",
    "select_cpu_backend",
]

Metric = Literal["l2", "cosine"]
Backend = Literal["auto", "faiss", "torch"]
Approximate = Literal["ivf", "hnsw"]

_U32 = 2.0**-24
_U64 = 2.0**-53
_UNIT_TF32 = 2.0**-11
_UNIT_BF16 = 2.0**-8
_SAFETY = 2.0
_DEFAULT_BLOCK_BYTES = 256 << 20
_OLD_OPENBLAS_CORES = {"prescott", "core2", "katmai", "coppermine", "northwood", "banias", "atom"}


# --------------------------------------------------------------------------------------------
# FAISS discovery
# --------------------------------------------------------------------------------------------


def _import_faiss() -> Any:
    import faiss

    return faiss


def faiss_available() -> bool:
    """Returns whether the ``faiss`` module can be imported."""
    try:
        _import_faiss()
    except ImportError:
        return False
    return True


def faiss_num_gpus() -> int:
    """Returns ``faiss.get_num_gpus()``, or 0 when FAISS is missing or CPU-only."""
    try:
        faiss = _import_faiss()
    except ImportError:
        return 0
    getter = getattr(faiss, "get_num_gpus", None)
    return int(getter()) if getter is not None else 0


def faiss_openblas_coretype() -> str | None:
    """Returns the CPU core type that the OpenBLAS bundled with FAISS detected, if known.

    The faiss-gpu wheel bundles OpenBLAS 0.3.15, which detects some recent Xeons as the old
    ``Prescott`` core and then runs its SGEMM (and so FAISS's CPU flat search) several times
    slower; ``OPENBLAS_CORETYPE=SkylakeX`` (or ``Zen``), set before the process starts, fixes it.
    """
    if not faiss_available():
        return None
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        return None
    for info in threadpool_info():
        if info.get("internal_api") == "openblas" and "faiss" in str(info.get("filepath", "")):
            arch = info.get("architecture")
            return str(arch) if arch is not None else None
    return None


# --------------------------------------------------------------------------------------------
# Input checks and error bounds
# --------------------------------------------------------------------------------------------


def _check_metric(metric: str) -> None:
    if metric not in ("l2", "cosine"):
        raise ValueError(f"metric must be 'l2' or 'cosine', got {metric!r}")


def _gamma(n: int, unit: float) -> float:
    nu = n * unit
    return math.inf if nu >= 1.0 else nu / (1.0 - nu)


def _torch_unit(device: torch.device) -> float:
    """Unit roundoff of a float32 torch matmul on ``device``."""
    if device.type != "cuda":
        return _U32
    precision = torch.get_float32_matmul_precision()
    if precision == "medium":
        return _UNIT_BF16
    if precision == "high" or torch.backends.cuda.matmul.allow_tf32:
        return _UNIT_TF32
    return _U32


def _faiss_gpu_unit() -> float:
    return _UNIT_TF32 if os.environ.get("NVIDIA_TF32_OVERRIDE", "") == "1" else _U32


def _row_tolerance(
    q_norm: Tensor, max_mean_norm: float, dim: int, metric: str, unit: float
) -> Tensor:
    """Bound (cost units) on the error of every float32 score of each query row."""
    if metric == "l2":
        return _SAFETY * _gamma(dim + 8, unit) * (q_norm + max_mean_norm) ** 2
    return torch.full_like(q_norm, _SAFETY * _gamma(2 * dim + 16, unit))


def _direct_cost(q: Tensor, m: Tensor, metric: str) -> Tensor:
    """Float64 cost (smaller is nearer) of paired rows ``q[i]`` and ``m[i]``."""
    q = q.to(torch.float64)
    m = m.to(torch.float64)
    if metric == "l2":
        diff = q - m
        cost: Tensor = (diff * diff).sum(1)
        return cost
    cost = -(q * m).sum(1) / (q.norm(dim=1) * m.norm(dim=1))
    return cost


def _check_cosine_rows(x: Tensor, name: str) -> None:
    zero = x.norm(dim=1) == 0
    if bool(zero.any()):
        first = int(zero.nonzero()[0, 0])
        raise ValueError(
            f"{name} has {int(zero.sum())} zero-norm rows (first: {first}); "
            "the cosine metric is undefined for them"
        )


def ncm_reference(
    queries: Tensor,
    means: Tensor,
    metric: Metric = "l2",
    *,
    block_bytes: int = _DEFAULT_BLOCK_BYTES,
) -> Tensor:
    """Float64 nearest-mean rule, the definition the exact search reproduces.

    Cost is ``sum((x - mu)^2)`` (``"l2"``) or ``-<x, mu> / (||x|| ||mu||)`` (``"cosine"``), in
    float64 from the given values; ties go to the lowest index. Candidates are located with a
    float64 GEMM and certified with the float64 error bound, then re-scored directly, so the
    cost is one float64 GEMM (blocked, bounded memory) instead of an ``n * C * d`` broadcast.

    Args:
        queries: ``(n, d)`` features.
        means: ``(C, d)`` class means.
        metric: ``"l2"`` or ``"cosine"``.
        block_bytes: Memory budget of one score block.

    Returns:
        ``(n,)`` int64 indices into ``means``.

    Example:
        >>> ncm_reference(torch.tensor([[0.9, 0.0]]), torch.eye(2)).tolist()
        [0]
    """
    _check_metric(metric)
    check_matrix(means, "means")
    check_matrix(queries, "queries", means.shape[1])
    q = queries.detach().to(torch.float64)
    m = means.detach().to(torch.float64)
    if metric == "cosine":
        _check_cosine_rows(q, "queries")
        _check_cosine_rows(m, "means")
    return _TorchScorer(m, m, metric, block_bytes=block_bytes).search(q)


# --------------------------------------------------------------------------------------------
# Scoring engines
# --------------------------------------------------------------------------------------------


class _TorchScorer:
    """Blocked top-2 search with torch matmul, plus the exact re-check shared by all backends.

    ``search_means`` are what the GEMM sees (float32 or float64; normalized for cosine);
    ``ref_means`` are the values the re-check uses.
    """

    def __init__(
        self,
        search_means: Tensor,
        ref_means: Tensor,
        metric: str,
        *,
        block_bytes: int = _DEFAULT_BLOCK_BYTES,
    ) -> None:
        self.metric = metric
        self.block_bytes = int(block_bytes)
        dtype = search_means.dtype
        self.center: Tensor | None = None
        if metric == "cosine":
            search_means = search_means / search_means.norm(dim=1, keepdim=True)
        else:
            # L2 is translation invariant: centring on the mean of the means shrinks the norms
            # in the error bound (features after a ReLU share a large offset). It costs a pass
            # over every query, so it is done only where it at least halves the largest mean
            # norm (not for means spread around the origin).
            center = ref_means.to(torch.float64).mean(0)
            norms = ref_means.to(torch.float64).norm(dim=1).max()
            centred_norms = (ref_means.to(torch.float64) - center).norm(dim=1).max()
            if float(centred_norms) < 0.5 * float(norms):
                self.center = center.to(dtype)
                search_means = search_means - self.center
        self.means = search_means.contiguous()
        self.ref_means = ref_means
        if metric == "l2":
            m64 = self.means.to(torch.float64)
            self.bias: Tensor | None = (-0.5 * (m64 * m64).sum(1)).to(dtype)
            self.max_norm = float(m64.norm(dim=1).max())
        else:
            self.bias = None
            self.max_norm = 1.0
        self.unit = _U64 if dtype == torch.float64 else _torch_unit(search_means.device)
        self.num_means, self.dim = search_means.shape

    def prepare(self, q: Tensor) -> Tensor:
        """Queries as the GEMM sees them: search dtype, centred (L2) or normalized (cosine)."""
        q = q.to(device=self.means.device, dtype=self.means.dtype)
        if self.metric == "cosine":
            out: Tensor = q / q.norm(dim=1, keepdim=True)
            return out
        return q - self.center if self.center is not None else q

    def tolerance(self, q_search: Tensor, unit: float | None = None) -> Tensor:
        """Per-row bound (cost units) on the error of each float32 score of ``q_search``."""
        unit = self.unit if unit is None else unit
        # a float32 norm is within gamma_(d+2) of the exact one: inflate it to stay an upper bound
        q_norm = q_search.norm(dim=1).to(torch.float64)
        if q_search.dtype != torch.float64:
            q_norm = q_norm * (1.0 + _gamma(self.dim + 2, _U32))
        return _row_tolerance(q_norm, self.max_norm, self.dim, self.metric, unit)

    # ---- float32 (or float64) top-2 -------------------------------------------------------
    def _blocks(self, rows: int) -> int:
        per_row = self.means.element_size() * rows
        budget = self.block_bytes * (8 if self.means.is_cuda else 1)  # GPU: fewer, larger GEMMs
        return max(1024, budget // max(per_row, 1))

    def _scores(self, q: Tensor, start: int, stop: int) -> Tensor:
        m = self.means[start:stop]
        if self.bias is None:
            return q @ m.T
        return torch.addmm(self.bias[start:stop], q, m.T)

    def _to_cost(self, scores: Tensor) -> Tensor:
        return -2.0 * scores if self.metric == "l2" else -scores

    def top2(self, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns ``(cost1, idx1, cost2)`` with ``cost1 <= cost2`` (cost2 = inf if C == 1)."""
        parts = [self._top2_rows(q[r : r + 4096]) for r in range(0, q.shape[0], 4096)]
        if len(parts) == 1:
            return parts[0]
        c1, i1, c2 = zip(*parts, strict=True)
        return torch.cat(c1), torch.cat(i1), torch.cat(c2)

    def _top2_rows(self, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        block = self._blocks(q.shape[0])
        best_v: Tensor | None = None
        best_i: Tensor | None = None
        for start in range(0, self.num_means, block):
            stop = min(start + block, self.num_means)
            scores = self._scores(q, start, stop)
            if scores.is_cuda and stop - start > 1:
                # two max-reductions beat a radix top-k on the GPU
                v1, i1 = scores.max(1, keepdim=True)
                v2 = scores.scatter_(1, i1, -math.inf).max(1, keepdim=True).values
                v, i = torch.cat([v1, v2], 1), torch.cat([i1, i1], 1)
            else:
                v, i = scores.topk(min(2, stop - start), dim=1)
            i = i + start
            if best_v is None or best_i is None:
                best_v, best_i = v, i
            else:
                v = torch.cat([best_v, v], 1)
                i = torch.cat([best_i, i], 1)
                sel_v, sel = v.topk(min(2, v.shape[1]), dim=1)
                best_v, best_i = sel_v, i.gather(1, sel)
        assert best_v is not None and best_i is not None
        cost = self._to_cost(best_v)
        cost2 = torch.full_like(cost[:, 0], math.inf) if cost.shape[1] == 1 else cost[:, 1]
        return cost[:, 0], best_i[:, 0], cost2

    # ---- exact re-check --------------------------------------------------------------------
    def recheck(self, q_ref: Tensor) -> Tensor:
        """Exact nearest mean (direct float64 formula, lowest index on ties) for ``q_ref`` rows.

        One pass over the class blocks keeps every class within twice the error bound of the
        running float32 minimum (a superset of the final candidate set), then the candidates
        are re-scored in float64.
        """
        n = q_ref.shape[0]
        device = self.means.device
        if n == 0:
            return torch.empty(0, dtype=torch.long, device=device)
        q_search = self.prepare(q_ref)
        tol2 = 2.0 * self.tolerance(q_search)
        rows_per = max(1, min(n, self.block_bytes // (16 * 1024)))
        out = torch.empty(n, dtype=torch.long, device=device)
        for r0 in range(0, n, rows_per):
            r1 = min(n, r0 + rows_per)
            qs = q_search[r0:r1]
            block = self._blocks(r1 - r0)
            best = torch.full((r1 - r0,), math.inf, dtype=torch.float64, device=device)
            rows_l: list[Tensor] = []
            cls_l: list[Tensor] = []
            cost_l: list[Tensor] = []
            for start in range(0, self.num_means, block):
                cost = self._to_cost(self._scores(qs, start, min(start + block, self.num_means)))
                cost = cost.to(torch.float64)
                best = torch.minimum(best, cost.min(1).values)
                r, c = (cost <= (best + tol2[r0:r1])[:, None]).nonzero(as_tuple=True)
                rows_l.append(r)
                cls_l.append(c + start)
                cost_l.append(cost[r, c])
            rows, cls, cost32 = torch.cat(rows_l), torch.cat(cls_l), torch.cat(cost_l)
            keep = cost32 <= (best + tol2[r0:r1])[rows]
            out[r0:r1] = self._resolve(q_ref[r0:r1].to(device), rows[keep], cls[keep], r1 - r0)
        return out

    def _resolve(self, q_ref: Tensor, rows: Tensor, cls: Tensor, n: int) -> Tensor:
        pair_chunk = max(1, self.block_bytes // (16 * self.dim))
        costs = torch.empty(rows.shape[0], dtype=torch.float64, device=rows.device)
        for p0 in range(0, rows.shape[0], pair_chunk):
            p1 = p0 + pair_chunk
            costs[p0:p1] = _direct_cost(
                q_ref[rows[p0:p1]], self.ref_means[cls[p0:p1]].to(rows.device), self.metric
            )
        row_min = torch.full((n,), math.inf, dtype=torch.float64, device=rows.device)
        row_min = row_min.scatter_reduce(0, rows, costs, reduce="amin")
        big = torch.iinfo(torch.long).max
        masked = torch.where(costs == row_min[rows], cls, torch.full_like(cls, big))
        best = torch.full((n,), big, dtype=torch.long, device=rows.device)
        return best.scatter_reduce(0, rows, masked, reduce="amin")

    def top1_certified(self, q_ref: Tensor, unit: float | None = None) -> tuple[Tensor, Tensor]:
        """Best class of each query and whether it is certified, all classes in one block.

        For CPU searches whose classes fit one block (:meth:`single_block`), the top-2
        selection (and even a plain ``argmax``, which the CPU runs several times slower than a
        max-reduction) is replaced by: the row maximum (``amax``, vectorized), one in-place
        compare turning the score block into a 0/1 mask of the classes within the doubled
        error bound of the maximum, the mask's row sums (a row is certified when only its best
        class is in the mask) and the mask times ``(0, 1, ..., C-1)`` (the best class of a
        certified row, exact in float32 for ``C < 2^24``), both from one skinny product. The
        queries are prepared and bounded per chunk of rows, while the chunk is in cache. The
        test is that of :meth:`search`, made conservative for float32 rounding: it may flag a
        few more rows, never fewer.

        Args:
            q_ref: ``(n, d)`` queries as given (float32 or float64).
            unit: Unit roundoff of the scores (default: the scorer's).

        Returns:
            ``(idx1, unsure)``: int64 best classes (meaningful where not unsure) and a mask.
        """
        # columns (1, c): one skinny product gives each row's mask count and position sum
        probe = torch.stack(
            [
                torch.ones(self.num_means, dtype=self.means.dtype, device=self.means.device),
                torch.arange(self.num_means, dtype=self.means.dtype, device=self.means.device),
            ],
            dim=1,
        )
        # ~2M scores (8 MiB) per chunk keeps the block in cache for the passes after the GEMM
        # (measured: 2048 rows at C = 1,000 ran 1.25x faster than 4096).
        rows = max(512, min(4096, (1 << 21) // max(self.num_means, 1)))
        idx_parts, unsure_parts = [], []
        for r in range(0, q_ref.shape[0], rows):
            q = self.prepare(q_ref[r : r + rows])
            tol = self.tolerance(q, unit)
            # cost = -2 score (L2) or -score (cosine): a cost margin of 2 tol is a score margin
            # of tol (L2) or 2 tol (cosine); widened for the float32 rounding of the subtraction.
            margin = (tol if self.metric == "l2" else 2.0 * tol).to(q.dtype)
            scores = self._scores(q, 0, self.num_means)
            best = scores.amax(1)
            slack = margin * 1.001 + best.abs() * (4.0 * _U32)
            mask = scores.ge_((best - slack)[:, None])  # in place: 1.0 near the best, else 0.0
            count_and_position = mask @ probe
            unsure_parts.append(count_and_position[:, 0] >= 2)
            idx_parts.append(count_and_position[:, 1].long())
        return torch.cat(idx_parts), torch.cat(unsure_parts)

    def single_block(self, rows: int) -> bool:
        """Whether a CPU float32 search of ``rows`` queries sees all classes in one block (then
        :meth:`top1_certified` replaces :meth:`top2`)."""
        one_block = self._blocks(min(4096, rows)) >= self.num_means
        return one_block and not self.means.is_cuda and self.means.dtype == torch.float32

    def best_and_unsure(self, q_ref: Tensor, unit: float | None = None) -> tuple[Tensor, Tensor]:
        """Float32 best class of each query and the mask of rows to re-check."""
        if self.single_block(q_ref.shape[0]):
            return self.top1_certified(q_ref, unit)
        q_search = self.prepare(q_ref)
        cost1, idx1, cost2 = self.top2(q_search)
        tol = self.tolerance(q_search, unit).to(cost1.device)
        return idx1, (cost2.to(torch.float64) - cost1.to(torch.float64)) <= 2.0 * tol

    def search(self, q_ref: Tensor) -> Tensor:
        """Exact search: float32 best class with a certificate, then re-check of the unsure rows."""
        idx1, unsure_mask = self.best_and_unsure(q_ref)
        unsure = unsure_mask.nonzero()[:, 0]
        idx = idx1.clone()
        if unsure.numel():
            idx[unsure] = self.recheck(q_ref[unsure.to(q_ref.device)])
        return idx


# --------------------------------------------------------------------------------------------
# Backend choice
# --------------------------------------------------------------------------------------------

_CALIBRATION_CACHE: dict[tuple[int, int, str, int], tuple[str, dict[str, float]]] = {}


def _build_faiss_flat(means32: np.ndarray[Any, Any], metric: str) -> Any:
    faiss = _import_faiss()
    dim = means32.shape[1]
    index = faiss.IndexFlatL2(dim) if metric == "l2" else faiss.IndexFlatIP(dim)
    index.add(means32)
    return index


def select_cpu_backend(
    dim: int, num_means: int, metric: Metric = "l2", *, repeats: int = 3
) -> tuple[str, dict[str, float]]:
    """Picks the faster exact CPU backend ("faiss" or "torch") by a one-time calibration.

    Times the float32 top-2 search of both backends on a synthetic problem of 1024 queries
    against ``min(num_means, 4096)`` means of width ``dim`` (interleaved, best of ``repeats``),
    and caches the choice per ``(dim, min(num_means, 4096), metric, threads)``. This catches a
    mis-detected OpenBLAS core (e.g. ``Prescott``) in the faiss-gpu wheel, with which FAISS's CPU
    flat search ran about 3.5x slower than torch's matmul. Without FAISS the answer is "torch".

    Args:
        dim: Feature width.
        num_means: Number of class means.
        metric: ``"l2"`` or ``"cosine"``.
        repeats: Timed runs per backend.

    Returns:
        ``(backend, info)``; ``info`` holds the timings in seconds and the calibration cost.

    Example:
        >>> backend, info = select_cpu_backend(16, 32)
        >>> backend in ("faiss", "torch")
        True
    """
    _check_metric(metric)
    if not faiss_available():
        return "torch", {}
    cm = max(1, min(int(num_means), 4096))
    key = (int(dim), cm, metric, torch.get_num_threads())
    if key in _CALIBRATION_CACHE:
        return _CALIBRATION_CACHE[key]
    t_start = time.perf_counter()
    gen = torch.Generator().manual_seed(1234)
    q = torch.randn(1024, dim, generator=gen)
    m = torch.randn(cm, dim, generator=gen)
    if metric == "cosine":
        q = q / q.norm(dim=1, keepdim=True)
    scorer = _TorchScorer(m, m, metric)
    q = scorer.prepare(q)
    index = _build_faiss_flat(scorer.means.numpy(), metric)
    qn = q.numpy()
    k = min(2, cm)
    times = {"faiss": math.inf, "torch": math.inf}
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        index.search(qn, k)
        times["faiss"] = min(times["faiss"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        scorer.top2(q)
        times["torch"] = min(times["torch"], time.perf_counter() - t0)
    choice = "faiss" if times["faiss"] <= times["torch"] else "torch"
    info = {
        "faiss_s": times["faiss"],
        "torch_s": times["torch"],
        "calibration_s": time.perf_counter() - t_start,
    }
    result = (choice, info)
    _CALIBRATION_CACHE[key] = result
    return result


# --------------------------------------------------------------------------------------------
# The index
# --------------------------------------------------------------------------------------------


class NearestMeanIndex:
    """Exact (default) or approximate nearest-class-mean search over fixed class means.

    Backends: ``"faiss"`` (GPU flat index when ``faiss.get_num_gpus() > 0``, sharded over all
    GPUs when there are several; CPU flat index otherwise), ``"torch"`` (blocked matmul + top-2,
    on the device of ``means``), or ``"auto"``: FAISS-GPU when a GPU is visible to FAISS,
    torch when ``means`` live on a CUDA device FAISS cannot use, else the faster CPU backend by
    :func:`select_cpu_backend`. With a CUDA device that FAISS cannot use (faiss-cpu, or no
    FAISS), ``"auto"`` runs torch on CUDA. Memory stays bounded: queries go through in chunks of
    ``query_chunk`` rows and torch score blocks are capped at ``block_bytes``.

    The exact mode guarantees the float64 answer (see the module docstring); the approximate
    mode (``approximate="ivf"`` or ``"hnsw"``, meant for ``C >= 1e5``) skips the re-check and
    reports its top-1 recall against exact search through :meth:`estimate_recall`.

    Args:
        means: ``(C, d)`` class means (finite; non-zero rows for cosine).
        class_ids: ``(C,)`` labels returned for each row; defaults to ``arange(C)``. Must be
            increasing so that "lowest index on ties" also means "lowest class id".
        metric: ``"l2"`` (squared Euclidean) or ``"cosine"`` (for normalized features).
        backend: ``"auto"``, ``"faiss"`` or ``"torch"``.
        approximate: ``None`` (exact), ``"ivf"`` or ``"hnsw"`` (FAISS only).
        query_chunk: Queries per search call.
        block_bytes: Memory cap of one torch score block (8x on CUDA: 2 GiB by default).
        nlist: IVF lists (default ``4 * sqrt(C)``, at most ``C // 39``).
        nprobe: IVF lists probed per query.
        hnsw_m: HNSW graph degree.
        ef_search: HNSW search breadth.
        use_gpu: Force (``True``) or forbid (``False``) GPU use; ``None`` uses one when present.

    Raises:
        ValueError: On bad means, ids, metric, backend or option combinations.

    Example:
        >>> index = NearestMeanIndex(torch.eye(3), backend="torch")
        >>> index.search(torch.tensor([[0.1, 0.9, 0.0], [2.0, 0.0, 0.1]])).tolist()
        [1, 0]
    """

    def __init__(
        self,
        means: Tensor,
        *,
        class_ids: Tensor | None = None,
        metric: Metric = "l2",
        backend: Backend = "auto",
        approximate: Approximate | None = None,
        query_chunk: int = 65536,
        block_bytes: int = _DEFAULT_BLOCK_BYTES,
        nlist: int | None = None,
        nprobe: int = 16,
        hnsw_m: int = 32,
        ef_search: int = 128,
        use_gpu: bool | None = None,
    ) -> None:
        _check_metric(metric)
        if backend not in ("auto", "faiss", "torch"):
            raise ValueError(f"backend must be 'auto', 'faiss' or 'torch', got {backend!r}")
        if approximate not in (None, "ivf", "hnsw"):
            raise ValueError(f"approximate must be None, 'ivf' or 'hnsw', got {approximate!r}")
        if query_chunk < 1 or block_bytes < 1:
            raise ValueError("query_chunk and block_bytes must be positive")
        check_matrix(means, "means")
        if metric == "cosine":
            _check_cosine_rows(means, "means")
        num, dim = means.shape
        if class_ids is None:
            class_ids = torch.arange(num)
        check_labels(class_ids, num, None, "class_ids")
        if num > 1 and not bool((class_ids[1:] > class_ids[:-1]).all()):
            raise ValueError("class_ids must be strictly increasing")
        self.metric: str = metric
        self.approximate = approximate
        self.query_chunk = int(query_chunk)
        self.block_bytes = int(block_bytes)
        self.class_ids = class_ids.detach().to("cpu", torch.long)
        self.num_means, self.dim = int(num), int(dim)
        means = means.detach()
        self.ref_means = means if means.dtype == torch.float64 else means.float()
        n_gpu = faiss_num_gpus() if use_gpu is not False and backend != "torch" else 0
        if use_gpu and n_gpu == 0 and not torch.cuda.is_available():
            raise ValueError("use_gpu=True but no GPU is visible to faiss or torch")
        if approximate is not None and backend == "torch":
            raise ValueError("approximate search needs the faiss backend")
        if (backend == "faiss" or approximate is not None) and not faiss_available():
            raise ValueError("backend 'faiss' requested but faiss is not installed")
        self.calibration: dict[str, float] = {}
        chosen: str = backend
        if backend == "auto":
            if approximate is not None or n_gpu > 0:
                chosen = "faiss"
            elif means.device.type == "cuda":
                chosen = "torch"
            elif use_gpu is not False and torch.cuda.is_available():
                chosen = "torch"  # a GPU FAISS cannot use (e.g. faiss-cpu): torch on CUDA
                means = means.to("cuda")
                self.ref_means = self.ref_means.to("cuda")
            else:
                chosen, self.calibration = select_cpu_backend(dim, num, metric)
        self.backend: str = chosen
        self.device: str = "cpu"
        self.unit = _U32
        self.stats = {"queries": 0, "rechecked": 0}
        self.recall: float | None = None
        means32 = self.ref_means.float()
        # the torch scorer also serves the exact re-check of the faiss backend
        scorer_device = means32.device
        if chosen == "faiss" and n_gpu > 0 and torch.cuda.is_available():
            scorer_device = torch.device("cuda")  # keep the exact re-check on the GPU too
        self._scorer = _TorchScorer(
            means32.to(scorer_device),
            self.ref_means.to(scorer_device),
            metric,
            block_bytes=block_bytes,
        )
        self._index: Any = None
        if chosen == "faiss":
            self._build_faiss(
                self._scorer.means.cpu().numpy(), n_gpu, nlist, nprobe, hnsw_m, ef_search
            )
        else:
            self.device = str(means32.device)
            self.unit = self._scorer.unit

    def _build_faiss(
        self,
        means32: np.ndarray[Any, Any],
        n_gpu: int,
        nlist: int | None,
        nprobe: int,
        hnsw_m: int,
        ef_search: int,
    ) -> None:
        faiss = _import_faiss()
        dim, num = self.dim, self.num_means
        fmetric = faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        means32 = np.ascontiguousarray(means32, dtype=np.float32)
        if self.approximate == "hnsw":
            index = faiss.IndexHNSWFlat(dim, int(hnsw_m), fmetric)
            index.add(means32)
            index.hnsw.efSearch = int(ef_search)
            self._index = index  # HNSW has no GPU implementation in FAISS
            return
        if self.approximate == "ivf":
            lists = nlist if nlist is not None else int(4 * math.sqrt(num))
            lists = max(1, min(lists, num // 39 if num >= 39 else 1))
            quantizer = faiss.IndexFlatL2(dim) if self.metric == "l2" else faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, lists, fmetric)
            index.train(means32)
            index.add(means32)
            index.nprobe = min(int(nprobe), lists)
            self._quantizer = quantizer  # keep alive
        else:
            index = _build_faiss_flat(means32, self.metric)
        if n_gpu > 0:
            if n_gpu > 1:
                options = faiss.GpuMultipleClonerOptions()
                options.shard = True
                index = faiss.index_cpu_to_all_gpus(index, co=options)
                self.device = f"gpu-sharded:{n_gpu}"
            else:
                self._gpu_res = faiss.StandardGpuResources()
                index = faiss.index_cpu_to_gpu(self._gpu_res, 0, index)
                self.device = "gpu"
            self.unit = _faiss_gpu_unit()
        self._index = index

    # ---- search ---------------------------------------------------------------------------
    def _faiss_top2(self, q32: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        k = min(2, self.num_means)
        dist, idx = self._index.search(np.ascontiguousarray(q32.cpu().numpy()), k)
        d = torch.from_numpy(dist)
        cost = d if self.metric == "l2" else -d
        cost2 = cost[:, 1] if k == 2 else torch.full_like(cost[:, 0], math.inf)
        return cost[:, 0], torch.from_numpy(idx)[:, 0], cost2

    def _search_chunk(self, q: Tensor) -> Tensor:
        if self.metric == "cosine":
            _check_cosine_rows(q, "queries")
        q_ref = q if q.dtype == torch.float64 else q.float()
        if self.backend == "torch":
            idx1, unsure_mask = self._scorer.best_and_unsure(q_ref, self.unit)
        else:
            q32 = self._scorer.prepare(q_ref)
            cost1, idx1, cost2 = self._faiss_top2(q32)
            if self.approximate is not None:
                return idx1
            tol = self._scorer.tolerance(q32, self.unit).to(cost1.device)
            unsure_mask = (cost2.to(torch.float64) - cost1.to(torch.float64)) <= 2.0 * tol
        unsure = unsure_mask.nonzero()[:, 0]
        idx = idx1.clone()
        if unsure.numel():
            self.stats["rechecked"] += int(unsure.numel())
            rows = q_ref[unsure.to(q_ref.device)]
            idx[unsure] = self._scorer.recheck(rows).to(idx.device)
        return idx

    def search_positions(self, queries: Tensor) -> Tensor:
        """Returns the row of ``means`` nearest to each query, as a CPU int64 tensor."""
        check_matrix(queries, "queries", self.dim)
        queries = queries.detach()
        out: list[Tensor] = []
        for start in range(0, queries.shape[0], self.query_chunk):
            chunk = queries[start : start + self.query_chunk]
            out.append(self._search_chunk(chunk).cpu())
        self.stats["queries"] += int(queries.shape[0])
        return torch.cat(out)

    def search(self, queries: Tensor) -> Tensor:
        """Returns the class id of the nearest mean for each ``(n, d)`` query (CPU int64).

        Raises:
            ValueError: On a wrong shape, non-finite values, or zero rows under cosine.
        """
        return self.class_ids[self.search_positions(queries)]

    def estimate_recall(self, queries: Tensor, max_queries: int = 10000) -> float:
        """Top-1 recall of this index against exact search on (up to ``max_queries``) queries.

        For an exact index this is 1.0 by construction. The value is stored in ``recall``.
        """
        check_matrix(queries, "queries", self.dim)
        q = queries[:max_queries]
        approx = self.search_positions(q)
        if self.approximate is None:
            exact = approx
        else:
            exact = NearestMeanIndex(
                self.ref_means,
                metric=self.metric,  # type: ignore[arg-type]
                backend="auto",
                query_chunk=self.query_chunk,
                block_bytes=self.block_bytes,
            ).search_positions(q)
        self.recall = float((approx == exact).double().mean())
        return self.recall

    def describe(self) -> dict[str, Any]:
        """Backend, device, mode and counters, for reports."""
        return {
            "backend": self.backend,
            "device": self.device,
            "metric": self.metric,
            "mode": self.approximate or "exact",
            "num_means": self.num_means,
            "dim": self.dim,
            "unit_roundoff": self.unit,
            "openblas_coretype": faiss_openblas_coretype(),
            "recall": self.recall,
            **self.stats,
            **{f"calib_{k}": v for k, v in self.calibration.items()},
        }


# --------------------------------------------------------------------------------------------
# Streaming class means
# --------------------------------------------------------------------------------------------


class ClassMeanAccumulator:
    """Streaming per-class sums and counts, O(C * d) memory.

    Each :meth:`update` does one ``index_add_`` into the sums and one ``bincount`` into the
    counts. The default float32 sums follow the issue's memory budget (4 bytes per entry); the
    relative error of a float32 running sum of ``n`` terms is bounded by ``n * 2^-24`` (about
    ``sqrt(n) * 2^-24`` in practice), i.e. below 1e-4 for a million samples per class.
    ``dtype=torch.float64`` doubles the memory and makes the means exact to float64, which
    lets :class:`NearestMeanIndex` reproduce the float64 rule computed from raw features.

    Classes without samples have no mean: :meth:`means` returns NaN rows for them and
    :meth:`present_means` leaves them out (so an all-zero vector can never win a query).

    Args:
        num_classes: Number of classes ``C``.
        dim: Feature width ``d``.
        dtype: Accumulation dtype (float32 or float64).
        device: Where the sums live.

    Example:
        >>> acc = ClassMeanAccumulator(3, 2)
        >>> acc.update(torch.tensor([[1.0, 0.0], [3.0, 0.0]]), torch.tensor([0, 0]))
        >>> means, ids = acc.present_means()
        >>> means.tolist(), ids.tolist()
        ([[2.0, 0.0]], [0])
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if num_classes < 1 or dim < 1:
            raise ValueError(f"num_classes and dim must be >= 1, got {num_classes}, {dim}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.sums = torch.zeros(num_classes, dim, dtype=dtype, device=device)
        self.counts = torch.zeros(num_classes, dtype=torch.long, device=device)

    def update(self, features: Tensor, labels: Tensor) -> None:
        """Adds a batch of ``(n, d)`` features with ``(n,)`` integer labels.

        Raises:
            ValueError: On a shape mismatch, labels out of ``[0, C)`` or non-finite features.
        """
        check_matrix(features, "features", self.dim)
        check_labels(labels, features.shape[0], self.num_classes)
        device = self.sums.device
        labels = labels.detach().to(device=device, dtype=torch.long)
        self.sums.index_add_(0, labels, features.detach().to(device=device, dtype=self.sums.dtype))
        self.counts += torch.bincount(labels, minlength=self.num_classes)

    def merge(self, other: ClassMeanAccumulator) -> None:
        """Adds another accumulator's sums and counts (e.g. from another data shard)."""
        if (other.num_classes, other.dim) != (self.num_classes, self.dim):
            raise ValueError("accumulators differ in num_classes or dim")
        self.sums += other.sums.to(self.sums)
        self.counts += other.counts.to(self.counts.device)

    @property
    def present(self) -> Tensor:
        """``(C,)`` bool mask of the classes with at least one sample."""
        return self.counts > 0

    def means(self) -> Tensor:
        """``(C, d)`` class means; rows of empty classes are NaN."""
        counts = self.counts.to(self.sums.dtype)[:, None]
        return torch.where(counts > 0, self.sums / counts.clamp_min(1), math.nan)

    def present_means(self) -> tuple[Tensor, Tensor]:
        """Means of the non-empty classes and their class ids (increasing).

        Raises:
            ValueError: If no class has a sample.
        """
        ids = self.present.nonzero()[:, 0]
        if ids.numel() == 0:
            raise ValueError("no class has any sample; call update() first")
        return self.sums[ids] / self.counts[ids].to(self.sums.dtype)[:, None], ids.cpu()


# --------------------------------------------------------------------------------------------
# Classifier
# --------------------------------------------------------------------------------------------

Batch = Any
FeatureFn = Callable[[Batch], tuple[Tensor, Tensor]]


def _default_split(batch: Batch) -> tuple[Tensor, Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError("loader batches must be (inputs, labels) pairs")


class NCMClassifier:
    """Nearest-class-mean classifier: streaming means + :class:`NearestMeanIndex`.

    Args:
        num_classes: Number of classes ``C``.
        dim: Feature width ``d``.
        metric: ``"l2"`` or ``"cosine"`` (for normalized features; means are normalized
            after averaging).
        accum_dtype: Dtype of the class sums (see :class:`ClassMeanAccumulator`).
        device: Where the sums live.
        on_empty: ``"exclude"`` (default; empty classes are left out of the index, never
            predicted, and a ``UserWarning`` names how many) or ``"raise"`` (``ValueError``).
        **index_options: Passed to :class:`NearestMeanIndex` (backend, approximate, ...).

    Example:
        >>> ncm = NCMClassifier(2, 2, backend="torch")
        >>> _ = ncm.fit(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 1]))
        >>> ncm.predict(torch.tensor([[0.9, 0.1]])).tolist()
        [1]
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        *,
        metric: Metric = "l2",
        accum_dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        on_empty: Literal["exclude", "raise"] = "exclude",
        **index_options: Any,
    ) -> None:
        _check_metric(metric)
        if on_empty not in ("exclude", "raise"):
            raise ValueError(f"on_empty must be 'exclude' or 'raise', got {on_empty!r}")
        self.metric: Metric = metric
        self.on_empty = on_empty
        self.index_options = index_options
        self.accumulator = ClassMeanAccumulator(num_classes, dim, dtype=accum_dtype, device=device)
        self._index: NearestMeanIndex | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes ``C``."""
        return self.accumulator.num_classes

    @property
    def dim(self) -> int:
        """Feature width ``d``."""
        return self.accumulator.dim

    def update(self, features: Tensor, labels: Tensor) -> None:
        """Adds a batch to the class means (invalidates a built index)."""
        self.accumulator.update(features, labels)
        self._index = None

    def fit(self, features: Tensor, labels: Tensor) -> NCMClassifier:
        """Adds ``features``/``labels`` and returns ``self``."""
        self.update(features, labels)
        return self

    def fit_loader(
        self,
        loader: Iterable[Batch],
        model: Callable[[Tensor], Any] | None = None,
        *,
        device: torch.device | str | None = None,
    ) -> NCMClassifier:
        """Accumulates means over a loader of ``(inputs, labels)`` batches.

        Args:
            loader: Iterable of ``(inputs, labels)``.
            model: If given, ``model(inputs)`` returns ``(features, logits)`` (or features);
                otherwise the inputs are the features.
            device: Where inputs go before ``model``.

        Returns:
            ``self``.
        """
        with torch.no_grad():
            for batch in loader:
                x, y = _default_split(batch)
                if device is not None:
                    x = x.to(device)
                feats = x
                if model is not None:
                    out = model(x)
                    feats = out[0] if isinstance(out, (tuple, list)) else out
                self.update(feats, y)
        return self

    def build(self) -> NearestMeanIndex:
        """Builds (or returns the cached) index over the present class means."""
        if self._index is not None:
            return self._index
        missing = int((~self.accumulator.present).sum())
        if missing:
            msg = f"{missing} of {self.num_classes} classes have no samples"
            if self.on_empty == "raise":
                raise ValueError(msg)
            warnings.warn(f"{msg}; they are excluded from the NCM index", stacklevel=2)
        means, ids = self.accumulator.present_means()
        self._index = NearestMeanIndex(
            means, class_ids=ids, metric=self.metric, **self.index_options
        )
        return self._index

    def means(self) -> Tensor:
        """``(C, d)`` class means (NaN rows for empty classes)."""
        return self.accumulator.means()

    def predict(self, features: Tensor) -> Tensor:
        """Class id of the nearest mean for each row of ``features`` (CPU int64)."""
        return self.build().search(features)

    def accuracy(self, features: Tensor, labels: Tensor) -> float:
        """Fraction of rows whose nearest mean is their label."""
        check_labels(labels, features.shape[0], self.num_classes)
        return float((self.predict(features) == labels.cpu()).double().mean())


# --------------------------------------------------------------------------------------------
# NC4
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NC4Report:
    """NC4 summary.

    Attributes:
        num_samples: Samples seen.
        agreement: Fraction where the model's decision equals the NCM decision (1.0 under
            full collapse).
        model_accuracy: Accuracy of the model's decision.
        ncm_accuracy: Accuracy of the NCM decision.
        rechecked: Queries the exact search re-scored in float64.
        backend: Backend of the NCM index.
    """

    num_samples: int
    agreement: float
    model_accuracy: float
    ncm_accuracy: float
    rechecked: int = 0
    backend: str = ""

    @property
    def mismatch(self) -> float:
        """NC4 as in Papyan et al.: fraction of disagreements, ``1 - agreement``."""
        return 1.0 - self.agreement

    def as_dict(self) -> dict[str, Any]:
        """Fields plus ``mismatch`` as a plain dict."""
        return {**asdict(self), "mismatch": self.mismatch}


class NC4Meter:
    """Streaming NC4: compares model decisions with NCM decisions batch by batch.

    The model's decision is ``logits.argmax(1)``, an explicit ``decisions`` tensor, or, when
    ``proxies`` are given (HUG), the nearest proxy by cosine (exact, through
    :class:`NearestMeanIndex`).

    Args:
        ncm: A fitted :class:`NCMClassifier` or a :class:`NearestMeanIndex`.
        proxies: Optional ``(C, d)`` class proxies for nearest-proxy decisions.
        backend: Backend of the proxy index.

    Example:
        >>> ncm = NCMClassifier(2, 2, backend="torch").fit(torch.eye(2), torch.tensor([0, 1]))
        >>> meter = NC4Meter(ncm)
        >>> meter.update(torch.eye(2), torch.tensor([0, 1]), logits=torch.eye(2))
        >>> meter.compute().agreement
        1.0
    """

    def __init__(
        self,
        ncm: NCMClassifier | NearestMeanIndex,
        *,
        proxies: Tensor | None = None,
        backend: Backend = "auto",
    ) -> None:
        self.index = ncm.build() if isinstance(ncm, NCMClassifier) else ncm
        self.proxy_index = (
            NearestMeanIndex(proxies, metric="cosine", backend=backend)
            if proxies is not None
            else None
        )
        self.reset()

    def reset(self) -> None:
        """Clears the counters."""
        self.total = 0
        self.agree = 0
        self.model_correct = 0
        self.ncm_correct = 0

    def update(
        self,
        features: Tensor,
        labels: Tensor,
        *,
        logits: Tensor | None = None,
        decisions: Tensor | None = None,
    ) -> None:
        """Adds a batch.

        Args:
            features: ``(n, d)`` penultimate features.
            labels: ``(n,)`` true labels.
            logits: ``(n, C)`` scores; decision = argmax (ignored when proxies were given).
            decisions: ``(n,)`` model decisions, instead of logits.

        Raises:
            ValueError: If no decision source is available, or on shape mismatches.
        """
        check_matrix(features, "features")
        n = features.shape[0]
        check_labels(labels, n, None)
        if self.proxy_index is not None:
            dec = self.proxy_index.search(features)
        elif decisions is not None:
            check_labels(decisions, n, None, "decisions")
            dec = decisions.detach().cpu().long()
        elif logits is not None:
            if logits.ndim != 2 or logits.shape[0] != n:
                raise ValueError(f"logits must have shape ({n}, C), got {tuple(logits.shape)}")
            dec = logits.detach().argmax(1).cpu()
        else:
            raise ValueError("pass logits or decisions (or build the meter with proxies)")
        ncm = self.index.search(features)
        y = labels.detach().cpu().long()
        self.total += n
        self.agree += int((dec == ncm).sum())
        self.model_correct += int((dec == y).sum())
        self.ncm_correct += int((ncm == y).sum())

    def compute(self) -> NC4Report:
        """Returns the :class:`NC4Report` of everything seen since :meth:`reset`."""
        if self.total == 0:
            raise ValueError("NC4Meter.compute() called before any update()")
        t = float(self.total)
        return NC4Report(
            num_samples=self.total,
            agreement=self.agree / t,
            model_accuracy=self.model_correct / t,
            ncm_accuracy=self.ncm_correct / t,
            rechecked=int(self.index.stats["rechecked"]),
            backend=self.index.backend,
        )


def nc4_report(
    model: Callable[[Tensor], tuple[Tensor, Tensor]],
    loader: Iterable[Batch],
    ncm: NCMClassifier | NearestMeanIndex | None = None,
    *,
    fit_loader: Iterable[Batch] | None = None,
    proxies: Tensor | None = None,
    metric: Metric = "l2",
    device: torch.device | str | None = None,
    **ncm_options: Any,
) -> NC4Report:
    """NC4 report of ``model`` on ``loader`` in one evaluation pass.

    ``model(x)`` must return ``(features, logits)``. With a fitted ``ncm`` the report takes one
    pass over ``loader``. Without it, the class means are first accumulated over ``fit_loader``
    (default: ``loader`` itself, i.e. two passes in total), as NC4 compares against the means of
    the training features. The model is put in eval mode and restored afterwards.

    Args:
        model: Returns ``(features, logits)``.
        loader: ``(inputs, labels)`` batches to evaluate.
        ncm: A fitted classifier or index; built from ``fit_loader`` when ``None``.
        fit_loader: Data for the class means (when ``ncm`` is ``None``).
        proxies: Class proxies; the model's decision becomes the nearest proxy (HUG).
        metric: NCM metric when the means are built here.
        device: Where inputs are moved before ``model``.
        **ncm_options: Passed to :class:`NCMClassifier` when it is built here.

    Returns:
        The :class:`NC4Report`.

    Example:
        >>> lin = torch.nn.Linear(2, 2)
        >>> model = lambda x: (x, lin(x))
        >>> data = [(torch.eye(2), torch.tensor([0, 1]))]
        >>> nc4_report(model, data, backend="torch").num_samples
        2
    """
    was_training: bool | None = None
    if isinstance(model, torch.nn.Module):
        was_training = model.training
        model.eval()
    try:
        with torch.no_grad():
            if ncm is None:
                clf: NCMClassifier | None = None
                for batch in fit_loader if fit_loader is not None else loader:
                    x, y = _default_split(batch)
                    if device is not None:
                        x = x.to(device)
                    feats, logits = model(x)
                    if clf is None:
                        clf = NCMClassifier(
                            int(logits.shape[1]),
                            int(feats.shape[1]),
                            metric=metric,
                            **ncm_options,
                        )
                    clf.update(feats, y)
                if clf is None:
                    raise ValueError("fit data is empty")
                ncm = clf
            meter = NC4Meter(ncm, proxies=proxies)
            for batch in loader:
                x, y = _default_split(batch)
                if device is not None:
                    x = x.to(device)
                feats, logits = model(x)
                meter.update(feats, y, logits=logits)
            return meter.compute()
    finally:
        if was_training is not None and isinstance(model, torch.nn.Module):
            model.train(was_training)
