"""Exact (or approximate) nearest-mean search over fixed class means: FAISS or torch."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hug_plugins._checks import check_labels, check_matrix
from hug_plugins.ncm.bounds import (
    DEFAULT_BLOCK_BYTES,
    U32,
    Approximate,
    Backend,
    Metric,
    check_cosine_rows,
    check_metric,
    faiss_gpu_unit,
)
from hug_plugins.ncm.faiss_support import (
    faiss_available,
    faiss_num_gpus,
    faiss_openblas_coretype,
    import_faiss,
)
from hug_plugins.ncm.scorer import TorchScorer

# --------------------------------------------------------------------------------------------
# Backend choice
# --------------------------------------------------------------------------------------------

_CALIBRATION_CACHE: dict[tuple[int, int, str, int], tuple[str, dict[str, float]]] = {}


def build_faiss_flat(means32: np.ndarray[Any, Any], metric: str) -> Any:
    faiss = import_faiss()
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

    Examples:
        >>> backend, info = select_cpu_backend(16, 32)
        >>> backend in ("faiss", "torch")
        True
    """
    check_metric(metric)
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
    scorer = TorchScorer(m, m, metric)
    q = scorer.prepare(q)
    index = build_faiss_flat(scorer.means.numpy(), metric)
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

    Examples:
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
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        nlist: int | None = None,
        nprobe: int = 16,
        hnsw_m: int = 32,
        ef_search: int = 128,
        use_gpu: bool | None = None,
    ) -> None:
        check_metric(metric)
        if backend not in ("auto", "faiss", "torch"):
            raise ValueError(f"backend must be 'auto', 'faiss' or 'torch', got {backend!r}")
        if approximate not in (None, "ivf", "hnsw"):
            raise ValueError(f"approximate must be None, 'ivf' or 'hnsw', got {approximate!r}")
        if query_chunk < 1 or block_bytes < 1:
            raise ValueError("query_chunk and block_bytes must be positive")
        check_matrix(means, "means")
        if metric == "cosine":
            check_cosine_rows(means, "means")
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
            raise ValueError(
                "backend 'faiss' requested but faiss is not installed: "
                "pip install 'hug-plugins[faiss]' (or '[faiss-gpu]' for GPU indexes)"
            )
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
        self.unit = U32
        self.stats = {"queries": 0, "rechecked": 0}
        self.recall: float | None = None
        means32 = self.ref_means.float()
        # the torch scorer also serves the exact re-check of the faiss backend
        scorer_device = means32.device
        if chosen == "faiss" and n_gpu > 0 and torch.cuda.is_available():
            scorer_device = torch.device("cuda")  # keep the exact re-check on the GPU too
        self._scorer = TorchScorer(
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
        faiss = import_faiss()
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
            index = build_faiss_flat(means32, self.metric)
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
            self.unit = faiss_gpu_unit()
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
            check_cosine_rows(q, "queries")
        q_ref = q if q.dtype == torch.float64 else q.float()
        settled = False
        if self.backend == "torch":
            idx1, unsure_mask, settled = self._scorer.best_and_unsure(q_ref, self.unit)
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
            if not settled:
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
