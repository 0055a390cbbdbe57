"""Result tables of the jobs: mean ± std summaries, the command and hardware header, and
markdown + CSV files written atomically.

Example:
    >>> summarize([1.0, 2.0, 3.0])
    MeanStd(mean=2.0, std=1.0)
    >>> format_mean_std(2.3094, 0.1234)
    '2.31 ± 0.12'
"""

from __future__ import annotations

import csv
import io
import math
import os
import platform
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from harness.io import PathLike, atomic_write_text

__all__ = [
    "COLLAPSE_COLUMNS",
    "COLLAPSE_NOTE",
    "MeanStd",
    "command_string",
    "format_mean_std",
    "hardware_summary",
    "history_csv",
    "standard_header_lines",
    "summarize",
    "summarize_runs",
    "write_result_tables",
    "write_tables",
]

COLLAPSE_NOTE = (
    "NC1 = tr(Σ_W Σ_B⁺)/C; GNC2 = hyperspherical energy of the normalized centred class means "
    "relative to the optimal configuration (1 = uniform); NC3 = ‖W/‖W‖ − M/‖M‖‖ (W: classifier "
    "rows or proxies); NC4 = rate at which the classifier disagrees with the nearest class mean. "
    "nc1 / nc4: on the raw features (the literature's convention for linear heads); nc1_unit / "
    "nc4_unit: on the L2-normalized features x/‖x‖, the space in which HUG's proxy head decides "
    "(its loss ignores ‖x‖, so the raw-space NCM rule of NC4 is not HUG's decision rule)."
)
"""Header text that defines the collapse columns of the classification tables."""

COLLAPSE_COLUMNS = {
    "nc1": "nc1",
    "gnc2": "gnc2_ratio",
    "nc3": "nc3_dist",
    "nc4": "nc4_mismatch",
    "nc1_unit": "unit_nc1",
    "nc4_unit": "unit_nc4_mismatch",
}
"""Collapse column of a table -> key of :func:`harness.train.evaluate_collapse`'s results
(``unit_``: on ``x / ||x||``)."""


class MeanStd(NamedTuple):
    """A mean and a sample standard deviation, as returned by :func:`summarize`."""

    mean: float
    std: float


def summarize(values: Iterable[float]) -> MeanStd:
    """Returns the mean and the sample standard deviation (``ddof=1``) of ``values``.

    The standard deviation of a single value is reported as ``0.0``.

    Args:
        values: One or more numbers (e.g. a metric over seeds).

    Returns:
        ``MeanStd(mean, std)``, a named ``(mean, std)`` tuple.

    Raises:
        ValueError: If ``values`` is empty or contains a non-number.

    Example:
        >>> summarize([4.0])
        MeanStd(mean=4.0, std=0.0)
    """
    try:
        data = [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"summarize() needs numbers: {exc}") from None
    if not data:
        raise ValueError("summarize() needs at least one value, got an empty sequence")
    n = len(data)
    mean = math.fsum(data) / n
    if n == 1:
        return MeanStd(mean, 0.0)
    var = math.fsum((v - mean) ** 2 for v in data) / (n - 1)
    return MeanStd(mean, math.sqrt(var))


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def summarize_runs(
    runs: Sequence[Mapping[str, Any]],
    by: Sequence[str],
    metrics: Sequence[str] | Mapping[str, str],
    *,
    paired: Mapping[str, str] | None = None,
    baseline: Mapping[str, object] | None = None,
    seed_key: str = "seed",
) -> list[dict[str, Any]]:
    """One summary row per group of runs: mean ± std of each metric and paired differences.

    Groups are the distinct values of the ``by`` keys, in order of first appearance. A metric
    cell is :func:`summarize` over the group's finite values (``None`` when there is none).
    For each ``metric -> column`` of ``paired``, ``column`` holds the per-seed difference
    ``run - baseline run`` summarized over the seeds both groups ran, where the baseline group
    is this group with the ``baseline`` keys substituted (``None`` in the baseline's own rows
    and when no seed is shared); it follows its metric's column.

    Args:
        runs: One mapping per run, holding the ``by`` keys, ``seed_key`` and the metrics.
        by: Keys that define a group, e.g. ``("ratio", "method")``.
        metrics: Metric keys to summarize, in column order, or ``column -> metric key``.
        paired: ``metric key -> column`` of the paired differences to add (metric keys that are
            not in ``metrics`` are ignored).
        baseline: The keys that select the baseline group, e.g. ``{"method": "CE"}``.
        seed_key: The key that pairs runs across groups.

    Returns:
        Rows ``{*by, "seeds", *metrics, *paired columns}``.

    Raises:
        ValueError: If ``paired`` is given without ``baseline``.

    Example:
        >>> runs = [{"method": m, "seed": s, "err": e + s}
        ...         for m, e in (("CE", 10.0), ("HUG", 8.0)) for s in (0, 1)]
        >>> rows = summarize_runs(runs, ["method"], ["err"], paired={"err": "vs_CE"},
        ...                       baseline={"method": "CE"})
        >>> rows[1]["err"], rows[1]["vs_CE"], rows[0]["vs_CE"]
        (MeanStd(mean=8.5, std=0.7071067811865476), MeanStd(mean=-2.0, std=0.0), None)
    """
    if paired and not baseline:
        raise ValueError("paired differences need a baseline, e.g. {'method': 'CE'}")
    columns = metrics if isinstance(metrics, Mapping) else {m: m for m in metrics}
    groups: dict[tuple[object, ...], list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault(tuple(run.get(k) for k in by), []).append(run)
    rows: list[dict[str, Any]] = []
    for key, mine in groups.items():
        row: dict[str, Any] = {**dict(zip(by, key, strict=True)), "seeds": len(mine)}
        base_key = tuple((baseline or {}).get(k, v) for k, v in zip(by, key, strict=True))
        base = {r.get(seed_key): r for r in groups.get(base_key, [])}
        for column, metric in columns.items():
            values = [r[metric] for r in mine if _finite(r.get(metric))]
            row[column] = summarize(values) if values else None
            if paired and metric in paired:  # the paired column right after its metric
                diffs = [
                    float(r[metric]) - float(base[r.get(seed_key)][metric])
                    for r in mine
                    if r.get(seed_key) in base
                    and _finite(r.get(metric))
                    and _finite(base[r.get(seed_key)].get(metric))
                ]
                row[paired[metric]] = summarize(diffs) if diffs and base_key != key else None
        rows.append(row)
    return rows


def format_mean_std(mean: float, std: float, digits: int = 2) -> str:
    """Formats a mean and standard deviation as ``"2.31 ± 0.12"``.

    Args:
        mean: The mean.
        std: The standard deviation.
        digits: Digits after the decimal point.

    Returns:
        The formatted cell.

    Raises:
        ValueError: If ``digits`` is negative.
    """
    if digits < 0:
        raise ValueError(f"digits must be >= 0, got {digits}")
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _cpu_model() -> str:
    """Returns the CPU model name, best effort."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def hardware_summary() -> str:
    """Describes the machine a result was produced on: CPU, cores, GPU, torch and Python versions.

    Returns:
        A one-line string such as
        ``"CPU: AMD EPYC (2 cores); GPU: none; torch 2.4.0; Python 3.12.1"``.

    Example:
        >>> hardware_summary().startswith("CPU: ")
        True
    """
    cores = os.cpu_count() or 0
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        name = torch.cuda.get_device_name(0)
        gpu = name if count == 1 else f"{count}x {name}"
    else:
        gpu = "none"
    python = platform.python_version()
    return (
        f"CPU: {_cpu_model()} ({cores} cores); GPU: {gpu}; "
        f"torch {torch.__version__}; Python {python}"
    )


def command_string(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> str:
    """Returns the command line that started this process, shell-quoted.

    Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the command is rendered as the
    ``torchrun`` launch that started every process.

    Args:
        argv: The arguments to render; defaults to ``sys.argv``.
        env: The environment; defaults to ``os.environ``.

    Returns:
        E.g. ``"python integrations/digits.py --preset quick seeds=[0]"``.

    Example:
        >>> command_string(["integrations/digits.py", "--preset", "quick"], {})
        'python integrations/digits.py --preset quick'
        >>> command_string(["job.py"], {"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"})
        'torchrun --nnodes=2 --nproc_per_node=2 job.py'
    """
    args = list(sys.argv if argv is None else argv)
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return shlex.join(["python", *args])
    local = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    nodes = [f"--nnodes={world // local}"] if local != world else []
    return shlex.join(["torchrun", *nodes, f"--nproc_per_node={local}", *args])


def standard_header_lines(argv: Sequence[str] | None = None) -> list[str]:
    """Returns the header lines every result table carries: the exact command and the hardware.

    Args:
        argv: The command's arguments; defaults to ``sys.argv``.

    Returns:
        ``["Command: `...`", "Hardware: ..."]``.
    """
    return [f"Command: `{command_string(argv)}`", f"Hardware: {hardware_summary()}"]


def _as_mean_std(value: object) -> tuple[float, float] | None:
    """Returns ``value`` as a ``(mean, std)`` pair of floats if it is a pair of numbers."""
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        return float(value[0]), float(value[1])
    return None


def _digits_for(column: str, digits: int | Mapping[str, int]) -> int:
    if isinstance(digits, Mapping):
        return int(digits.get(column, 2))
    return int(digits)


def _markdown_cell(value: object, digits: int) -> str:
    pair = _as_mean_std(value)
    if pair is not None:
        return format_mean_std(pair[0], pair[1], digits)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def write_tables(
    rows: Sequence[Mapping[str, object]],
    path_stem: PathLike,
    header_lines: Sequence[str] | None = None,
    *,
    columns: Sequence[str] | None = None,
    digits: int | Mapping[str, int] = 2,
    title: str | None = None,
) -> tuple[Path, Path]:
    """Writes ``rows`` as a markdown table (``<stem>.md``) and a CSV file (``<stem>.csv``).

    A cell holding a ``(mean, std)`` pair (e.g. from :func:`summarize`) is shown as
    ``"2.31 ± 0.12"`` in markdown and split into ``<column>_mean`` and ``<column>_std`` columns
    in the CSV, which keeps full precision. Floats are rounded to ``digits`` in markdown only.
    Both files are written atomically.

    Args:
        rows: One mapping per table row, column name to value.
        path_stem: Output path without extension, e.g. ``"results/digits"``.
        header_lines: Lines printed above the markdown table. ``None`` uses
            :func:`standard_header_lines` (exact command and :func:`hardware_summary`).
        columns: Column order; defaults to the keys in order of first appearance.
        digits: Digits after the decimal point in markdown, for all columns or per column
            (columns missing from the mapping use 2).
        title: Optional markdown heading.

    Returns:
        The paths of the markdown and the CSV file.

    Raises:
        ValueError: If ``rows`` is empty, or ``columns`` names a column no row has.

    Example:
        >>> import tempfile, pathlib
        >>> stem = pathlib.Path(tempfile.mkdtemp()) / "res"
        >>> md, csv_path = write_tables(
        ...     [{"method": "CE", "error": summarize([0.1, 0.2])}], stem, ["demo"], digits=3
        ... )
        >>> print(md.read_text().splitlines()[-1])
        | CE | 0.150 ± 0.071 |
        >>> csv_path.read_text().splitlines()[0]
        'method,error_mean,error_std'
    """
    if not rows:
        raise ValueError("write_tables() needs at least one row, got none")
    if columns is None:
        seen: dict[str, None] = {}
        for row in rows:
            for key in row:
                seen.setdefault(key, None)
        columns = list(seen)
    else:
        columns = list(columns)
        known = {key for row in rows for key in row}
        missing = [c for c in columns if c not in known]
        if missing:
            raise ValueError(f"columns {missing} do not occur in any row; known: {sorted(known)}")
    if header_lines is None:
        header_lines = standard_header_lines()
    stem = Path(path_stem)
    md_path = stem.with_name(stem.name + ".md")
    csv_path = stem.with_name(stem.name + ".csv")

    lines: list[str] = []
    if title:
        lines += [f"# {title}", ""]
    for line in header_lines:
        lines += [line, ""]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        cells = [_markdown_cell(row.get(c), _digits_for(c, digits)) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    atomic_write_text(md_path, "\n".join(lines) + "\n")

    split = {c for c in columns if any(_as_mean_std(row.get(c)) is not None for row in rows)}
    csv_header: list[str] = []
    for c in columns:
        csv_header += [f"{c}_mean", f"{c}_std"] if c in split else [c]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(csv_header)
    for row in rows:
        out: list[object] = []
        for c in columns:
            value = row.get(c)
            pair = _as_mean_std(value)
            if c in split:
                out += list(pair) if pair is not None else ["" if value is None else value, ""]
            else:
                out.append("" if value is None else value)
        writer.writerow(out)
    atomic_write_text(csv_path, buffer.getvalue())
    return md_path, csv_path


def write_result_tables(
    rows: Sequence[Mapping[str, object]],
    runs: Sequence[Mapping[str, object]],
    path_stem: PathLike,
    header_lines: Sequence[str] | None,
    *,
    title: str,
    digits: int | Mapping[str, int] = 2,
    run_digits: int | Mapping[str, int] = 3,
    run_columns: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Writes a benchmark's summary table and its every-run table, both via :func:`write_tables`.

    The summary goes to ``<stem>.md`` / ``<stem>.csv`` under the heading ``title``; the runs go
    to ``<stem>_runs.md`` / ``<stem>_runs.csv`` under ``"<title>: every run"``. Both share the
    header lines (command, hardware, settings).

    Args:
        rows: Summary rows (mean ± std cells from :func:`summarize`).
        runs: One row per (method, seed, ...) run.
        path_stem: Output path without extension, e.g. ``"results/longtail_quick"``.
        header_lines: Lines above both tables (``None``: :func:`standard_header_lines`).
        title: Heading of the summary table.
        digits: Markdown digits of the summary table.
        run_digits: Markdown digits of the runs table.
        run_columns: Column order of the runs table (default: order of first appearance).

    Returns:
        ``{"md", "csv", "runs_md", "runs_csv"}`` to the written paths.

    Raises:
        ValueError: If ``rows`` or ``runs`` is empty (see :func:`write_tables`).

    Example:
        >>> import tempfile, pathlib
        >>> stem = pathlib.Path(tempfile.mkdtemp()) / "res"
        >>> paths = write_result_tables(
        ...     [{"method": "CE", "error": summarize([1.0, 2.0])}],
        ...     [{"method": "CE", "seed": s, "error": e} for s, e in [(0, 1.0), (1, 2.0)]],
        ...     stem, ["demo"], title="Demo",
        ... )
        >>> sorted(p.name for p in paths.values())
        ['res.csv', 'res.md', 'res_runs.csv', 'res_runs.md']
    """
    stem = Path(path_stem)
    md, csv_path = write_tables(rows, stem, header_lines, digits=digits, title=title)
    runs_md, runs_csv = write_tables(
        runs,
        stem.with_name(stem.name + "_runs"),
        header_lines,
        columns=run_columns,
        digits=run_digits,
        title=f"{title}: every run",
    )
    return {"md": md, "csv": csv_path, "runs_md": runs_md, "runs_csv": runs_csv}


def history_csv(
    histories: Mapping[tuple[Any, ...], Sequence[Mapping[str, float]]],
    key_names: Sequence[str],
) -> str:
    """Per-epoch histories of several runs as one CSV text: the run key, then every metric.

    Example:
        >>> print(history_csv({("ce", 0): [{"loss": 1.5}, {"loss": 1.0, "acc": 0.5}]}, ["m", "s"]))
        m,s,loss,acc
        ce,0,1.5,
        ce,0,1.0,0.5
        <BLANKLINE>
    """
    keys: dict[str, None] = {}
    for history in histories.values():
        for entry in history:
            for key in entry:
                keys.setdefault(key, None)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*key_names, *keys])
    for run, history in histories.items():
        for entry in history:
            writer.writerow([*run, *(entry.get(k, "") for k in keys)])
    return buffer.getvalue()
