"""Measurement tools of the NCM benchmark: peak memory, hardware facts, the FAISS core-type probe.

Example:
    >>> with PeakMemory() as mem:
    ...     _ = torch.ones(1 << 20)
    >>> mem.host_mib >= 0.0
    True
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
import torch

from hug_plugins.ncm.faiss_support import faiss_num_gpus, faiss_openblas_coretype

__all__ = ["PeakMemory", "hardware_lines", "openblas_probe", "probe_markdown", "trim_memory"]


def trim_memory() -> None:
    """Returns freed memory to the OS (glibc ``malloc_trim``) and empties the CUDA cache."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # non-glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class PeakMemory:
    """Samples host RSS (and device memory in use) in a thread; reports the peak deltas.

    Example:
        >>> with PeakMemory() as mem:
        ...     _ = torch.ones(1 << 20)
        >>> mem.host_mib >= 0.0
        True
    """

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
        trim_memory()
        self.base = int(self.proc.memory_info().rss)
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
        """Peak host RSS increase in MiB."""
        return float(self.peak - self.base) / 2**20

    @property
    def dev_mib(self) -> float:
        """Peak device-memory increase in MiB."""
        return float(self.dev_peak - self.dev_base) / 2**20


def hardware_lines() -> list[str]:
    """CPU, memory, FAISS and GPU facts for the table header."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    lines = [
        f"cpu: {cpu}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}",
        f"ram: {psutil.virtual_memory().total / 2**30:.0f} GiB",
        f"faiss_openblas_coretype: {faiss_openblas_coretype()}",
        f"OPENBLAS_CORETYPE: {os.environ.get('OPENBLAS_CORETYPE', '(unset)')}",
        f"faiss_gpus: {faiss_num_gpus()}",
    ]
    if torch.cuda.is_available():
        names = (torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        lines.append(f"gpu: {', '.join(names)}")
    return lines


_PROBE = r"""
import json, sys, time, torch
from hug_plugins.ncm import NearestMeanIndex, faiss_openblas_coretype
g = torch.Generator().manual_seed(0)
n, c, d = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
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


def openblas_probe(
    coretypes: Sequence[str], queries: int, classes: int, dim: int
) -> list[dict[str, Any]]:
    """FAISS vs torch search time under each ``OPENBLAS_CORETYPE`` (a fresh process each): the
    faiss-gpu wheel's OpenBLAS can pick a slow kernel for the CPU it runs on."""
    rows: list[dict[str, Any]] = []
    for coretype in coretypes:
        env = dict(os.environ)
        if coretype != "detected":
            env["OPENBLAS_CORETYPE"] = str(coretype)
        args = [str(queries), str(classes), str(dim)]
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE, *args],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            rows.append({"env": coretype, "error": proc.stderr.strip()[-300:]})
            continue
        rows.append({"env": coretype, **json.loads(proc.stdout.strip().splitlines()[-1])})
    return rows


def probe_markdown(
    probe: Sequence[Mapping[str, Any]], queries: int, classes: int, dim: int
) -> list[str]:
    """Markdown lines of the FAISS core-type probe (empty without a probe)."""
    if not probe:
        return []
    lines = [
        f"## OpenBLAS core-type probe (N={queries}, C={classes}, d={dim}, fresh process per row)",
        "",
        "| OPENBLAS_CORETYPE | detected | faiss s | torch s | auto picked | auto s |",
        "|---|---|---|---|---|---|",
    ]
    for p in probe:
        if "error" in p:
            lines.append(f"| {p['env']} | error: {p['error']} | | | | |")
            continue
        lines.append(
            f"| {p['env']} | {p['coretype']} | {p['faiss']['search_s']:.3f} | "
            f"{p['torch']['search_s']:.3f} | {p['auto']['picked']} | {p['auto']['search_s']:.3f} |"
        )
    return lines
