"""Benchmark of exact nearest-class-mean search at scale, against plain matmul and scikit-learn.

For N queries of width d against C class means it times

* ``ncm``: :class:`~hug_plugins.ncm.NearestMeanIndex` (exact; FAISS or torch picked
  automatically, float64 re-check of near ties),
* ``torch_matmul``: chunked ``addmm(-||mu||^2 / 2, x, mu^T).argmax(1)`` (float32, no re-check),
* ``sklearn``: ``sklearn.neighbors.NearestCentroid.predict`` (on a query subset),

on synthetic Gaussian features and on real-feature geometry (MNIST, or scikit-learn's digits
without a data root, through a fixed random ReLU projection to d). Each cell reports queries/s,
effective GFLOP/s (``2 N C d / t``), peak memory (host RSS delta sampled every 2 ms; on a GPU
also the device-memory delta) and exactness: disagreements with the float64 brute-force rule
on the first ``check_queries`` queries, which include ``near_ties`` queries placed within 1e-6
of a bisector between two means. On a GPU it also reports the FP32 GEMM bound.

Example:
    >>> settings = NCMBenchSettings(n_queries=500, dim=16, num_classes=(20,), repeats=1,
    ...     datasets=("synthetic",), methods=("ncm", "torch_matmul"), check_queries=200,
    ...     near_ties=50)
    >>> rows = run_benchmark(settings).rows
    >>> [(r["method"], r["exact"]) for r in rows][0]
    ('ncm', '0/200')
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

from harness.ncm.measure import PeakMemory, openblas_probe, trim_memory
from harness.train.runtime import resolve_device
from hug_plugins.ncm.index import NearestMeanIndex
from hug_plugins.ncm.scorer import ncm_reference

__all__ = [
    "COLUMNS",
    "FP32_PEAK",
    "METHODS",
    "NCMBenchResult",
    "NCMBenchSettings",
    "make_problem",
    "real_base_features",
    "run_benchmark",
]

FP32_PEAK = (
    ("H100 PCIe", 51.2e12),
    ("H100", 66.9e12),
    ("H200", 66.9e12),
    ("A100", 19.5e12),
    ("L40S", 91.6e12),
    ("A10", 31.2e12),
)
"""FP32 (non-tensor-core) peak FLOP/s by device-name fragment, first match wins."""

COLUMNS = (
    "dataset",
    "C",
    "N",
    "method",
    "backend",
    "device",
    "qps",
    "vs_matmul",
    "gflops",
    "gemm_bound_pct",
    "search_s",
    "build_s",
    "host_mib",
    "dev_mib",
    "exact",
    "rechecked",
    "recall",
)
"""Columns of a result row."""


@dataclass(frozen=True)
class NCMBenchSettings:
    """What to measure (the fields of ``configs/ncm/*.yaml``).

    Attributes:
        n_queries: Queries per cell (capped by ``max_tflop_per_cell``).
        dim: Feature width d.
        num_classes: Class counts C, one cell each.
        datasets: ``"synthetic"`` and/or ``"real"``.
        methods: ``"ncm"``, ``"torch_matmul"``, ``"sklearn"``.
        max_tflop_per_cell: Cap on ``2 N C d`` per cell (fewer queries at large C).
        check_queries: Queries checked against the float64 rule.
        near_ties: Near-tie queries at the start of every cell.
        backend: :class:`~hug_plugins.ncm.NearestMeanIndex` backend.
        approximate: Approximate index kind, used from ``approx_min_classes`` classes on.
        approx_min_classes: See ``approximate``.
        query_chunk: Query chunk of the exact index.
        torch_chunk: Query chunk of ``torch_matmul``.
        device: ``"auto"`` or ``"cpu"`` for ``torch_matmul``.
        sklearn_max_classes: Skip scikit-learn above this C.
        sklearn_max_queries: Query cap of scikit-learn.
        sklearn_max_tflop: FLOP cap of scikit-learn.
        data_root: Folder holding MNIST (torchvision layout) for the real features; ``None``:
            scikit-learn's digits.
        gpu_peak_tflops: FP32 peak for the GEMM bound (``None``: from :data:`FP32_PEAK`).
        probe_coretypes: ``OPENBLAS_CORETYPE`` values of the FAISS probe (empty: no probe).
        probe_queries: Queries of the probe.
        probe_classes: Classes of the probe.
        repeats: Interleaved rounds per cell (the median search time is reported).
        seed: Seed of the problems.
    """

    n_queries: int = 20000
    dim: int = 512
    num_classes: tuple[int, ...] = (1000, 10000)
    datasets: tuple[str, ...] = ("synthetic", "real")
    methods: tuple[str, ...] = ("ncm", "torch_matmul", "sklearn")
    max_tflop_per_cell: float = 0.3
    check_queries: int = 1000
    near_ties: int = 300
    backend: str = "auto"
    approximate: str | None = None
    approx_min_classes: int = 100000
    query_chunk: int = 65536
    torch_chunk: int = 4096
    device: str = "auto"
    sklearn_max_classes: int = 100000
    sklearn_max_queries: int = 5000
    sklearn_max_tflop: float = 0.05
    data_root: str | None = None
    gpu_peak_tflops: float | None = None
    probe_coretypes: tuple[str, ...] = ()
    probe_queries: int = 4096
    probe_classes: int = 4096
    repeats: int = 1
    seed: int = 0

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> NCMBenchSettings:
        """Settings from a config mapping (lists become tuples); unknown keys raise."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown NCM benchmark settings: {unknown}")
        converted: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in values.items()
        }
        return cls(**converted)


@dataclass
class NCMBenchResult:
    """Rows (one per dataset, C and method), the FAISS core-type probe and notes."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    probe: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------ problems


def real_base_features(data_root: str | None, dim: int, gen: torch.Generator) -> tuple[Tensor, str]:
    """Real image features through a fixed random ReLU projection; returns ``(feats, source)``.

    MNIST (all 70,000 images, through :func:`harness.data.load_image_dataset`) when
    ``data_root`` is given, else scikit-learn's digits in their original order.
    """
    if data_root:
        from harness.data import load_image_dataset

        train, test, _ = load_image_dataset("mnist", data_root)
        images = torch.cat([train.images, test.images])
        pixels = images.reshape(images.shape[0], -1).float() / 255.0
        source = f"MNIST ({pixels.shape[0]} images) from {data_root}"
    else:
        from harness.data import load_digits_arrays

        pixels = torch.from_numpy(load_digits_arrays()[0])
        source = f"scikit-learn digits ({pixels.shape[0]} images)"
    proj = torch.randn(pixels.shape[1], dim, generator=gen) / math.sqrt(pixels.shape[1])
    return torch.relu(pixels @ proj), source + f", fixed random ReLU projection to d={dim}"


def make_problem(
    kind: str, n: int, c: int, dim: int, near_ties: int, base: Tensor | None, seed: int
) -> tuple[Tensor, Tensor]:
    """Means ``(C, d)`` and queries ``(N, d)``, float32; the first ``near_ties`` are near ties.

    Example:
        >>> means, queries = make_problem("synthetic", 10, 3, 4, 2, None, 0)
        >>> tuple(means.shape), tuple(queries.shape)
        ((3, 4), (10, 4))
    """
    gen = torch.Generator().manual_seed(seed)
    if kind == "synthetic":
        means = torch.randn(c, dim, generator=gen)
        labels = torch.randint(0, c, (n,), generator=gen)
        queries = means[labels]
        queries += torch.randn(n, dim, generator=gen)
    elif kind == "real":
        if base is None:
            raise ValueError("the real problem needs base features")
        scale = float(base.std())
        means = torch.zeros(c, dim)
        for _ in range(8):  # each class mean averages 8 random real feature vectors
            means += base[torch.randint(0, base.shape[0], (c,), generator=gen)] / 8
        queries = base[torch.randint(0, base.shape[0], (n,), generator=gen)]
        queries += 0.05 * scale * torch.randn(n, dim, generator=gen)
    else:
        raise ValueError(f"dataset must be 'synthetic' or 'real', got {kind!r}")
    k = min(near_ties, n)
    if k and c > 1:
        a = torch.randint(0, c, (k,), generator=gen)
        b = (a + torch.randint(1, c, (k,), generator=gen)) % c
        mid = (means[a].double() + means[b].double()) / 2
        jitter = torch.randn(k, dim, generator=gen, dtype=torch.float64)
        queries[:k] = (mid + 1e-6 * mid.norm(dim=1, keepdim=True) / math.sqrt(dim) * jitter).float()
    return means.contiguous(), queries.contiguous()


# ------------------------------------------------------------------------------ methods

Runner = Callable[[Tensor, Tensor, NCMBenchSettings], tuple[Tensor, dict[str, Any]]]


def _run_ncm(means: Tensor, queries: Tensor, s: NCMBenchSettings) -> tuple[Tensor, dict[str, Any]]:
    t0 = time.perf_counter()
    approximate = s.approximate if means.shape[0] >= s.approx_min_classes else None
    index = NearestMeanIndex(
        means,
        backend=s.backend,  # type: ignore[arg-type]
        approximate=approximate,  # type: ignore[arg-type]
        query_chunk=s.query_chunk,
    )
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = index.search(queries)
    _sync()
    search = time.perf_counter() - t0
    info: dict[str, Any] = dict(index.describe())
    if index.approximate is not None:
        info["recall"] = index.estimate_recall(queries[s.near_ties :], s.check_queries)
    return pred, {"build_s": build, "search_s": search, **info}


def _run_torch(
    means: Tensor, queries: Tensor, s: NCMBenchSettings
) -> tuple[Tensor, dict[str, Any]]:
    device = resolve_device("cpu" if s.device == "cpu" else "auto")
    t0 = time.perf_counter()
    m = means.to(device)
    bias = -0.5 * (m * m).sum(1)
    build = time.perf_counter() - t0
    out = torch.empty(queries.shape[0], dtype=torch.long)
    t0 = time.perf_counter()
    for start in range(0, queries.shape[0], s.torch_chunk):
        q = queries[start : start + s.torch_chunk].to(device, non_blocking=True)
        out[start : start + s.torch_chunk] = torch.addmm(bias, q, m.T).argmax(1).cpu()
    _sync()
    search = time.perf_counter() - t0
    return out, {"build_s": build, "search_s": search, "backend": "torch", "device": str(device)}


def _run_sklearn(
    means: Tensor, queries: Tensor, s: NCMBenchSettings
) -> tuple[Tensor, dict[str, Any]]:
    from sklearn.neighbors import NearestCentroid

    t0 = time.perf_counter()
    with warnings.catch_warnings():  # one sample per class: fit warns, centroids are exact
        warnings.simplefilter("ignore")
        clf = NearestCentroid().fit(means.numpy(), np.arange(means.shape[0]))
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = torch.from_numpy(clf.predict(queries.numpy())).long()
    search = time.perf_counter() - t0
    return pred, {"build_s": build, "search_s": search, "backend": "sklearn", "device": "cpu"}


METHODS: dict[str, Runner] = {"ncm": _run_ncm, "torch_matmul": _run_torch, "sklearn": _run_sklearn}
"""Method name -> runner ``(means, queries, settings) -> (predictions, info)``."""


# ------------------------------------------------------------------------------ the run


def _gpu_peak(s: NCMBenchSettings) -> float | None:
    if s.gpu_peak_tflops:
        return float(s.gpu_peak_tflops) * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    for fragment, peak in FP32_PEAK:
        if fragment in name:
            return peak * torch.cuda.device_count()
    return None


def _cell(
    kind: str,
    c: int,
    s: NCMBenchSettings,
    base: Tensor | None,
    peak: float | None,
) -> list[dict[str, Any]]:
    """One (dataset, C) cell: every method, ``repeats`` interleaved rounds, median time."""
    n = int(min(s.n_queries, max(s.check_queries, s.max_tflop_per_cell * 1e12 / (2 * c * s.dim))))
    means, queries = make_problem(kind, n, c, s.dim, s.near_ties, base, s.seed)
    check = min(s.check_queries, n)
    device = resolve_device("auto")
    ref = ncm_reference(queries[:check].to(device), means.to(device)).cpu()
    cell: dict[str, dict[str, Any]] = {}
    methods = list(s.methods)
    for round_index in range(s.repeats):
        # rotate the order each round: no method always follows the same one (e.g.
        # scikit-learn's allocations evicting the caches of whichever runs next)
        shift = round_index % len(methods)
        for method in methods[shift:] + methods[:shift]:
            nm = n
            if method == "sklearn":
                if c > s.sklearn_max_classes:
                    continue
                cap = s.sklearn_max_tflop * 1e12 / (2 * c * s.dim)
                nm = int(max(check, min(n, s.sklearn_max_queries, cap)))
            with PeakMemory() as mem:
                pred, info = METHODS[method](means, queries[:nm], s)
            entry = cell.setdefault(method, {"n": nm, "times": [], "mem": mem})
            entry["times"].append(info["search_s"])
            entry.update(info=info, wrong=int((pred[:check] != ref).sum()))
            del pred
    rows = []
    for method, entry in cell.items():
        nm, mem, info = entry["n"], entry["mem"], entry["info"]
        search_s = statistics.median(entry["times"])
        flops = 2.0 * nm * c * s.dim
        row: dict[str, Any] = {
            "dataset": kind,
            "C": c,
            "N": nm,
            "method": method,
            "qps": nm / search_s,
            "gflops": flops / search_s / 1e9,
            "gemm_bound_pct": 100 * flops / peak / search_s if peak else None,
            "host_mib": mem.host_mib,
            "dev_mib": mem.dev_mib if torch.cuda.is_available() else None,
            "exact": f"{entry['wrong']}/{check}",
            **{k: v for k, v in info.items() if k in COLUMNS},
            "search_s": search_s,
        }
        if method == "ncm" and "torch_matmul" in cell:
            row["vs_matmul"] = statistics.median(cell["torch_matmul"]["times"]) / search_s
        rows.append(row)
    return rows


def run_benchmark(
    s: NCMBenchSettings, on_row: Callable[[dict[str, Any]], None] | None = None
) -> NCMBenchResult:
    """Runs every (dataset, C) cell and the optional FAISS probe.

    Args:
        s: The settings.
        on_row: Called with each finished row (progress output, partial files).

    Returns:
        The rows, the probe rows and the notes for the header.
    """
    start = time.perf_counter()
    torch.manual_seed(s.seed)
    gen = torch.Generator().manual_seed(s.seed)
    base, source = (None, "")
    if "real" in s.datasets:
        base, source = real_base_features(s.data_root, s.dim, gen)
    result = NCMBenchResult()
    result.notes += [
        f"datasets: synthetic = Gaussian means, queries = mean + N(0, I); real = {source}, "
        "each of the C classes averages 8 random real feature vectors, queries = "
        "real features + 5% Gaussian jitter",
        f"near-tie queries per cell: {s.near_ties}; checked queries: {s.check_queries}",
    ]
    peak = _gpu_peak(s)
    if peak:
        result.notes.append(f"FP32 GEMM bound uses peak {peak / 1e12:.1f} TFLOP/s")
    for kind in s.datasets:
        for c in s.num_classes:
            for row in _cell(kind, int(c), s, base, peak):
                result.rows.append(row)
                if on_row is not None:
                    on_row(row)
            trim_memory()
    result.probe = (
        openblas_probe(s.probe_coretypes, s.probe_queries, s.probe_classes, s.dim)
        if s.probe_coretypes
        else []
    )
    result.notes.append(f"total wall time {time.perf_counter() - start:.0f} s")
    return result
