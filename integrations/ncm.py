"""Benchmark: exact nearest-class-mean classification at scale (NC4 tooling).

Times :class:`hug_plugins.ncm.NearestMeanIndex` (exact) against a plain float32 matmul +
argmax and scikit-learn's ``NearestCentroid`` on synthetic and real-feature problems, and
checks every method against the float64 rule on near-tie queries
(:mod:`harness.ncm.benchmark` has the protocol).

Usage::

    python integrations/ncm.py                      # configs/ncm/default.yaml (N = 200k)
    python integrations/ncm.py --preset quick       # a minute on a laptop
    python integrations/ncm.py --preset gpu         # N = 1e6, C up to 1e6 (GPU)
    python integrations/ncm.py data_root=../shared/data n_queries=50000

Writes ``<output_dir>/<output_name>.md`` and ``.csv`` (atomically, also after every cell) with the
exact command and the hardware in the header.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.config import parse_cli, to_dict
from harness.ncm.benchmark import COLUMNS, NCMBenchSettings, run_benchmark
from harness.ncm.measure import hardware_lines, probe_markdown
from harness.tables import standard_header_lines, write_tables
from harness.train import torch_threads

DIGITS = {"qps": 0, "gflops": 1, "gemm_bound_pct": 1, "host_mib": 1, "dev_mib": 1}
DIGITS |= {"vs_matmul": 2, "search_s": 4, "build_s": 4, "recall": 4}

EXPLANATION = (
    "exact = disagreements with the float64 brute-force rule on the checked queries (which "
    "include the near-tie queries); qps = queries/s of the search alone, median over {repeats} "
    "interleaved rounds (build_s = index build incl. backend calibration); vs_matmul = "
    "torch_matmul's search time / ncm's (>= 1: the exact search is at least as fast as plain "
    "float32 matmul + argmax); gflops = 2 N C d / search_s; host_mib = peak host RSS delta; "
    "dev_mib = peak device-memory delta."
)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Entry point: ``[--preset NAME] [key=value ...]``; returns the result rows."""
    args = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_cli(args, "ncm", description=__doc__.splitlines()[0] if __doc__ else None)
    options = to_dict(cfg)
    stem = Path(str(options.pop("output_dir"))) / str(options.pop("output_name"))
    threads = options.pop("num_threads")
    settings = NCMBenchSettings.from_mapping(options)
    header = [*standard_header_lines(["integrations/ncm.py", *args]), *hardware_lines()]
    rows: list[dict[str, Any]] = []

    def write(notes: Sequence[str], probe: Sequence[str]) -> Path:
        lines = [*header, *notes, EXPLANATION.format(repeats=settings.repeats), *probe]
        columns = [c for c in COLUMNS if any(c in row for row in rows)]
        md, _ = write_tables(rows, stem, lines, columns=columns, digits=DIGITS, title="NCM")
        return md

    def on_row(row: dict[str, Any]) -> None:
        rows.append(row)
        print(json.dumps(row, default=str), flush=True)
        write(["(partial: the run is still going)"], [])

    with torch_threads(threads):
        result = run_benchmark(settings, on_row=on_row)
    for probe in result.probe:
        print(json.dumps(probe), flush=True)
    md = write(
        result.notes,
        probe_markdown(result.probe, settings.probe_queries, settings.probe_classes, settings.dim),
    )
    print(md.read_text(encoding="utf-8"))
    return result.rows


if __name__ == "__main__":
    main()
