"""Benchmark: exact nearest-class-mean classification at scale (NC4 tooling).

Compares, for N queries of width d against C class means,

* ``ncm``: :class:`hug_plugins.ncm.NearestMeanIndex` (exact; FAISS or torch picked
  automatically, float64 re-check of near ties),
* ``torch_matmul``: chunked ``addmm(-||mu||^2 / 2, x, mu^T).argmax(1)`` (float32, no re-check),
* ``sklearn``: ``sklearn.neighbors.NearestCentroid.predict`` (on a query subset),

on synthetic Gaussian features and on real-feature geometry (MNIST, or scikit-learn digits
without ``data_root``, through a fixed random ReLU projection to d). Reported: queries/s,
effective GFLOP/s (2 N C d / t), peak memory (host RSS delta sampled every 2 ms; on GPU also
the device-memory delta), and exactness: disagreements with the float64 brute-force rule
on the first ``check_queries`` queries, which include ``near_ties`` queries placed within 1e-6
of a bisector between two means. On a GPU it also reports the FP32 GEMM bound
``2 N C d / peak``.

Usage::

    python integrations/ncm.py                      # configs/ncm/default.yaml (N = 200k)
    python integrations/ncm.py --preset quick       # a minute on a laptop
    python integrations/ncm.py --preset gpu         # N = 1e6, C up to 1e6 (GPU)
    python integrations/ncm.py data_root=../shared/data/mnist n_queries=50000

Outputs ``<out_dir>/ncm_<preset>.md`` and ``.csv`` (atomic writes) with the exact command and
hardware in the header.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import gc
import io
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hug_plugins import ncm as ncm_mod  # noqa: E402
from hug_plugins.ncm import NearestMeanIndex, ncm_reference  # noqa: E402

# FP32 (non-tensor-core) peak FLOP/s by device-name fragment, first match wins.
FP32_PEAK = [
    ("H100 PCIe", 51.2e12),
    ("H100", 66.9e12),
    ("H200", 66.9e12),
    ("A100", 19.5e12),
    ("L40S", 91.6e12),
    ("A10", 31.2e12),
]


# ------------------------------------------------------------------------------------------
# config
# ------------------------------------------------------------------------------------------


def load_cfg(argv: list[str]) -> tuple[Any, str]:
    preset = "default"
    for i, a in enumerate(argv):
        if a == "--preset" and i + 1 < len(argv):
            preset = argv[i + 1]
        elif a.startswith("--preset="):
            preset = a.split("=", 1)[1]
    try:
        from hug_plugins.config import parse_cli
    except ImportError:  # no omegaconf (e.g. a bare GPU image): flat YAML + key=value
        return _yaml_cfg(argv, preset), Path(preset).stem
    return parse_cli(argv, "ncm", description=__doc__), Path(preset).stem


def _yaml_cfg(argv: list[str], preset: str) -> Any:
    import yaml

    path = Path(preset) if preset.endswith(".yaml") else ROOT / "configs/ncm" / f"{preset}.yaml"
    data = yaml.safe_load(path.read_text())
    for item in argv:
        if "=" in item and not item.startswith("--"):
            key, value = item.split("=", 1)
            if key not in data:
                raise ValueError(f"unknown config key {key!r}")
            data[key] = yaml.safe_load(value)
    return _Cfg(data)


class _Cfg(dict):  # type: ignore[type-arg]
    """Attribute access to a flat dict (fallback when OmegaConf is unavailable)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


# ------------------------------------------------------------------------------------------
# measurement helpers
# ------------------------------------------------------------------------------------------


def _trim() -> None:
    gc.collect()
    with contextlib.suppress(OSError):  # non-glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class PeakMemory:
    """Samples host RSS (and device memory in use) in a thread; reports the peak deltas."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.proc = psutil.Process()
        self.cuda = torch.cuda.is_available()

    def _dev_used(self) -> int:
        if not self.cuda:
            return 0
        free, total = torch.cuda.mem_get_info()
        return int(total - free)

    def __enter__(self) -> PeakMemory:
        _trim()
        self.base = self.proc.memory_info().rss
        self.dev_base = self._dev_used()
        self.peak = self.base
        self.dev_peak = self.dev_base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            if self.cuda:
                self.dev_peak = max(self.dev_peak, self._dev_used())
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        if self.cuda:
            self.dev_peak = max(self.dev_peak, self._dev_used())

    @property
    def host_mib(self) -> float:
        return (self.peak - self.base) / 2**20

    @property
    def dev_mib(self) -> float:
        return (self.dev_peak - self.dev_base) / 2**20


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------


def real_base_features(cfg: Any, dim: int, gen: torch.Generator) -> tuple[torch.Tensor, str]:
    """Real image features through a fixed random ReLU projection; returns (feats, source)."""
    if cfg.data_root:
        from torchvision.datasets import MNIST

        parts = [MNIST(str(cfg.data_root), train=t, download=False) for t in (True, False)]
        pixels = torch.cat([p.data.reshape(len(p), -1) for p in parts]).float() / 255.0
        source = f"MNIST ({pixels.shape[0]} images) from {cfg.data_root}"
    else:
        from sklearn.datasets import load_digits

        pixels = torch.from_numpy(load_digits().data).float() / 16.0
        source = f"scikit-learn digits ({pixels.shape[0]} images)"
    proj = torch.randn(pixels.shape[1], dim, generator=gen) / math.sqrt(pixels.shape[1])
    return torch.relu(pixels @ proj), source + f", fixed random ReLU projection to d={dim}"


def make_problem(
    kind: str, n: int, c: int, dim: int, near_ties: int, base: torch.Tensor | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Means (C, d) and queries (N, d), float32; the first ``near_ties`` queries are near ties."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "synthetic":
        means = torch.randn(c, dim, generator=gen)
        labels = torch.randint(0, c, (n,), generator=gen)
        queries = means[labels]
        queries += torch.randn(n, dim, generator=gen)
    else:
        assert base is not None
        scale = float(base.std())
        means = torch.zeros(c, dim)
        for _ in range(8):  # each class mean averages 8 random real feature vectors
            means += base[torch.randint(0, base.shape[0], (c,), generator=gen)] / 8
        queries = base[torch.randint(0, base.shape[0], (n,), generator=gen)]
        queries += 0.05 * scale * torch.randn(n, dim, generator=gen)
    k = min(near_ties, n)
    if k and c > 1:
        a = torch.randint(0, c, (k,), generator=gen)
        b = (a + torch.randint(1, c, (k,), generator=gen)) % c
        mid = (means[a].double() + means[b].double()) / 2
        jitter = torch.randn(k, dim, generator=gen, dtype=torch.float64)
        queries[:k] = (mid + 1e-6 * mid.norm(dim=1, keepdim=True) / math.sqrt(dim) * jitter).float()
    return means.contiguous(), queries.contiguous()


# ------------------------------------------------------------------------------------------
# methods
# ------------------------------------------------------------------------------------------


def run_ncm(means: torch.Tensor, queries: torch.Tensor, cfg: Any) -> tuple[torch.Tensor, dict]:
    t0 = time.perf_counter()
    index = NearestMeanIndex(
        means,
        backend=cfg.backend,
        approximate=cfg.approximate if means.shape[0] >= cfg.approx_min_classes else None,
        query_chunk=cfg.query_chunk,
    )
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = index.search(queries)
    _sync()
    search = time.perf_counter() - t0
    info = index.describe()
    if index.approximate is not None:
        info["recall"] = index.estimate_recall(queries[cfg.near_ties :], cfg.check_queries)
    return pred, {"build_s": build, "search_s": search, **info}


def run_torch(means: torch.Tensor, queries: torch.Tensor, cfg: Any) -> tuple[torch.Tensor, dict]:
    device = torch.device("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    m = means.to(device)
    bias = -0.5 * (m * m).sum(1)
    build = time.perf_counter() - t0
    chunk = int(cfg.torch_chunk)
    out = torch.empty(queries.shape[0], dtype=torch.long)
    t0 = time.perf_counter()
    for s in range(0, queries.shape[0], chunk):
        q = queries[s : s + chunk].to(device, non_blocking=True)
        out[s : s + chunk] = torch.addmm(bias, q, m.T).argmax(1).cpu()
    _sync()
    search = time.perf_counter() - t0
    return out, {"build_s": build, "search_s": search, "backend": "torch", "device": str(device)}


def run_sklearn(means: torch.Tensor, queries: torch.Tensor, cfg: Any) -> tuple[torch.Tensor, dict]:
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


METHODS: dict[str, Callable[[torch.Tensor, torch.Tensor, Any], tuple[torch.Tensor, dict]]] = {
    "ncm": run_ncm,
    "torch_matmul": run_torch,
    "sklearn": run_sklearn,
}


# ------------------------------------------------------------------------------------------
# OpenBLAS core-type probe (the faiss-gpu wheel pitfall)
# ------------------------------------------------------------------------------------------

PROBE = r"""
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
from hug_plugins.ncm import NearestMeanIndex, faiss_openblas_coretype
g = torch.Generator().manual_seed(0)
n, c, d = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
m = torch.randn(c, d, generator=g); q = torch.randn(n, d, generator=g)
res = {"coretype": faiss_openblas_coretype()}
for b in ("faiss", "torch", "auto"):
    t0 = time.perf_counter(); idx = NearestMeanIndex(m, backend=b); build = time.perf_counter() - t0
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter(); idx.search(q); best = min(best, time.perf_counter() - t0)
    res[b] = {"search_s": best, "build_s": build, "picked": idx.backend}
print(json.dumps(res))
"""


def openblas_probe(cfg: Any) -> list[dict[str, Any]]:
    rows = []
    for coretype in cfg.probe_coretypes:
        env = dict(os.environ)
        if coretype != "detected":
            env["OPENBLAS_CORETYPE"] = str(coretype)
        args = [str(ROOT), str(cfg.probe_queries), str(cfg.probe_classes), str(cfg.dim)]
        proc = subprocess.run(
            [sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True
        )
        if proc.returncode != 0:
            rows.append({"env": coretype, "error": proc.stderr.strip()[-300:]})
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append({"env": coretype, **res})
    return rows


# ------------------------------------------------------------------------------------------
# reporting
# ------------------------------------------------------------------------------------------


def hardware() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    hw = {
        "cpu": f"{cpu}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}",
        "ram": f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "faiss_openblas_coretype": str(ncm_mod.faiss_openblas_coretype()),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
        "faiss_gpus": str(ncm_mod.faiss_num_gpus()),
        "versions": f"python {platform.python_version()}, torch {torch.__version__}",
    }
    try:
        import faiss
        import sklearn

        hw["versions"] += f", faiss {faiss.__version__}, scikit-learn {sklearn.__version__}"
    except ImportError:
        pass
    if torch.cuda.is_available():
        hw["gpu"] = ", ".join(
            torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
        )
    return hw


def gpu_peak(cfg: Any) -> float | None:
    if cfg.gpu_peak_tflops:
        return float(cfg.gpu_peak_tflops) * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    for frag, peak in FP32_PEAK:
        if frag in name:
            return peak * torch.cuda.device_count()
    return None


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


COLUMNS = [
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
]


def fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return "-" if v is None else str(v)


def render(cfg: Any, preset: str, rows: list[dict], probe: list[dict], notes: list[str]) -> str:
    out = io.StringIO()
    cmd = " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])
    out.write(f"# NCM benchmark (preset `{preset}`)\n\n")
    out.write(f"Command: `{cmd}`\n\n")
    for k, v in hardware().items():
        out.write(f"- {k}: {v}\n")
    for note in notes:
        out.write(f"- {note}\n")
    out.write(
        "\nexact = disagreements with the float64 brute-force rule on the checked queries "
        "(which include the near-tie queries); qps = queries/s of the search alone, median over "
        f"{getattr(cfg, 'repeats', 1)} interleaved rounds (build_s = index build incl. backend "
        "calibration); vs_matmul = torch_matmul's search time / ncm's (>= 1: the exact search is "
        "at least as fast as plain float32 matmul + argmax); gflops = 2 N C d / search_s; "
        "host_mib = peak host RSS delta; dev_mib = peak device-memory delta.\n\n"
    )
    out.write("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n")
    for r in rows:
        out.write("| " + " | ".join(fmt(r.get(c)) for c in COLUMNS) + " |\n")
    if probe:
        out.write(
            f"\n## OpenBLAS core-type probe (N={cfg.probe_queries}, C={cfg.probe_classes}, "
            f"d={cfg.dim}, fresh process per row)\n\n"
            "| OPENBLAS_CORETYPE | detected | faiss s | torch s | auto picked | auto s |\n"
            "|---|---|---|---|---|---|\n"
        )
        for p in probe:
            if "error" in p:
                out.write(f"| {p['env']} | error: {p['error']} | | | | |\n")
                continue
            out.write(
                f"| {p['env']} | {p['coretype']} | {p['faiss']['search_s']:.3f} | "
                f"{p['torch']['search_s']:.3f} | {p['auto']['picked']} | "
                f"{p['auto']['search_s']:.3f} |\n"
            )
    return out.getvalue()


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k) for k in COLUMNS})
    return buf.getvalue()


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg, preset = load_cfg(argv)
    torch.manual_seed(cfg.seed)
    dim = int(cfg.dim)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    base, source = (None, "")
    if "real" in cfg.datasets:
        base, source = real_base_features(cfg, dim, gen)
    notes = [
        f"datasets: synthetic = Gaussian means, queries = mean + N(0, I); real = {source}, "
        "each of the C classes averages 8 random real feature vectors, queries = "
        "real features + 5% Gaussian jitter",
        f"near-tie queries per cell: {cfg.near_ties}; checked queries: {cfg.check_queries}",
    ]
    peak = gpu_peak(cfg)
    if peak:
        notes.append(f"FP32 GEMM bound uses peak {peak / 1e12:.1f} TFLOP/s")
    out_dir = Path(cfg.out_dir)
    rows: list[dict] = []
    t_start = time.perf_counter()
    for kind in cfg.datasets:
        for c in cfg.num_classes:
            c = int(c)
            n = int(
                min(
                    cfg.n_queries,
                    max(cfg.check_queries, float(cfg.max_tflop_per_cell) * 1e12 / (2 * c * dim)),
                )
            )
            means, queries = make_problem(kind, n, c, dim, int(cfg.near_ties), base, int(cfg.seed))
            check = min(int(cfg.check_queries), n)
            ref = ncm_reference(queries[:check].to(_ref_device()), means.to(_ref_device())).cpu()
            # Methods run round-robin, `repeats` rounds; each row keeps its median search time,
            # so a drift of the machine's speed hits every method alike.
            repeats = int(getattr(cfg, "repeats", 1))
            cell: dict[str, dict] = {}
            methods = list(cfg.methods)
            for round_index in range(repeats):
                # rotate the order each round: no method always follows the same one (e.g.
                # scikit-learn's allocations evicting the caches of whichever runs next)
                shift = round_index % len(methods)
                for method in methods[shift:] + methods[:shift]:
                    nm = n
                    if method == "sklearn":
                        if c > cfg.sklearn_max_classes:
                            continue
                        cap = cfg.sklearn_max_tflop * 1e12 / (2 * c * dim)
                        nm = int(max(check, min(n, cfg.sklearn_max_queries, cap)))
                    q = queries[:nm]
                    with PeakMemory() as mem:
                        pred, info = METHODS[method](means, q, cfg)
                    entry = cell.setdefault(method, {"n": nm, "times": [], "mem": mem})
                    entry["times"].append(info["search_s"])
                    entry.update(info=info, wrong=int((pred[:check] != ref).sum()))
                    del pred
            for method, entry in cell.items():
                nm, mem, info = entry["n"], entry["mem"], entry["info"]
                search_s = statistics.median(entry["times"])
                flops = 2.0 * nm * c * dim
                row = {
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
                }
                row["search_s"] = search_s
                if method == "ncm" and "torch_matmul" in cell:
                    row["vs_matmul"] = statistics.median(cell["torch_matmul"]["times"]) / search_s
                rows.append(row)
                print(json.dumps({k: fmt(v) for k, v in row.items()}), flush=True)
            del means, queries
            _trim()
            atomic_write(out_dir / f"ncm_{preset}.csv", to_csv(rows))
    probe = openblas_probe(cfg) if cfg.probe_coretypes else []
    for p in probe:
        print(json.dumps(p), flush=True)
    notes.append(f"total wall time {time.perf_counter() - t_start:.0f} s")
    atomic_write(out_dir / f"ncm_{preset}.md", render(cfg, preset, rows, probe, notes))
    atomic_write(out_dir / f"ncm_{preset}.csv", to_csv(rows))
    print(f"wrote {out_dir / f'ncm_{preset}.md'}")
    return 0


def _ref_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


if __name__ == "__main__":
    raise SystemExit(main())
