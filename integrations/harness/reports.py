"""The multi-file report of a CE-vs-HUG comparison job: tables, every run, epochs and plots.

:func:`summary_rows` reduces the runs of a comparison to its table (mean ± std over seeds, the
paired difference to CE, the collapse columns); :func:`write_comparison_report` writes what
``integrations/classification.py`` produces from its runs: one summary table per comparison,
the every-run table, the per-epoch history CSV, one collapse plot per (dataset, arch) and a
combined markdown page that shows the tables and the plots. Every file is written atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.io import PathLike, atomic_write_text
from harness.plots import plot_collapse
from harness.tables import COLLAPSE_COLUMNS, history_csv, summarize_runs, write_tables
from harness.train.comparison import COMPARISON_METHODS, RunKey

__all__ = ["summary_rows", "write_comparison_report"]


def summary_rows(
    combos: Sequence[tuple[str, str, str]],
    runs: Mapping[RunKey, Mapping[str, Any]],
    paper: Mapping[tuple[str, str, str], float] | None = None,
) -> list[dict[str, Any]]:
    """One row per ``(dataset, arch, method)``: test error mean ± std over seeds, the paired
    per-seed difference to CE in percentage points, the paper's number and the collapse
    columns.

    Example:
        >>> runs = {("d", "cnn", m, s): {"test_error": e + s / 100, "loss": 1.0}
        ...         for m, e in (("ce", 0.2), ("learnable", 0.1)) for s in (0, 1)}
        >>> row = summary_rows([("d", "cnn", "learnable")], runs)[0]
        >>> row["method"], round(row["vs_CE_pp"].mean, 6)
        ('HUG (learnable)', -10.0)
    """
    flat = [
        {"dataset": d, "arch": a, "method": m, "seed": s, **r, "error_%": 100.0 * r["test_error"]}
        for (d, a, m, s), r in runs.items()
    ]
    metrics = {"test_error_%": "error_%", **COLLAPSE_COLUMNS, "train_loss": "loss"}
    groups = summarize_runs(
        flat,
        ["dataset", "arch", "method"],
        metrics,
        paired={"error_%": "vs_CE_pp"},
        baseline={"method": "ce"},
    )
    by_combo = {(g["dataset"], g["arch"], g["method"]): g for g in groups}
    rows: list[dict[str, Any]] = []
    for combo in combos:
        if combo not in by_combo:
            continue
        group = dict(by_combo[combo])
        row = {k: group.pop(k) for k in ("dataset", "arch", "method", "seeds", "test_error_%")}
        row["method"] = COMPARISON_METHODS[combo[2]]
        row["vs_CE_pp"] = group.pop("vs_CE_pp")
        row["paper_error_%"] = (paper or {}).get(combo)
        rows.append({**row, **group})
    return rows


def write_comparison_report(
    table_rows: Mapping[str, Sequence[Mapping[str, Any]]],
    titles: Mapping[str, str],
    runs: Mapping[RunKey, Mapping[str, Any]],
    histories: Mapping[RunKey, Sequence[Mapping[str, float]]],
    path_stem: PathLike,
    header_lines: Sequence[str],
    *,
    method_names: Mapping[str, str],
    run_metrics: Mapping[str, str],
    plotted: Mapping[str, str],
    digits: Mapping[str, int],
) -> tuple[dict[str, Path], str]:
    """Writes the report files of a comparison job; returns their paths and the combined page.

    Args:
        table_rows: ``table -> summary rows``, written to ``<stem>_<table>.md`` / ``.csv``.
        titles: ``table -> title`` (headed ``"Classification: <title>"``).
        runs: Final metrics per run (``test_error``, ``loss``, ``seconds``,
            ``resumed_from_epoch`` and the ``run_metrics`` keys).
        histories: Per-epoch history entries per run.
        path_stem: Output path without extension, e.g. ``"results/classification_quick"``.
        header_lines: Lines above every table (command, hardware, settings).
        method_names: Method key -> display name.
        run_metrics: Column -> key in ``runs`` of the every-run table's metric columns.
        plotted: History key -> panel title of the collapse plots.
        digits: Markdown digits per column.

    Returns:
        ``(paths, page)``: paths under the keys ``<table>_md``, ``<table>_csv``, ``runs_md``,
        ``runs_csv``, ``epochs_csv``, ``plot_<dataset>_<arch>`` and ``md`` (the combined page),
        and the combined page's markdown text.
    """
    stem = Path(path_stem)
    paths: dict[str, Path] = {}
    sections: list[str] = []
    for table, rows in table_rows.items():
        md, csv_path = write_tables(
            rows,
            stem.with_name(f"{stem.name}_{table}"),
            header_lines,
            digits=digits,
            title=f"Classification: {titles[table]}",
        )
        paths[f"{table}_md"], paths[f"{table}_csv"] = md, csv_path
        sections.append(md.read_text(encoding="utf-8"))
    run_rows = [
        {
            "dataset": dataset,
            "arch": arch,
            "method": method_names[method],
            "seed": seed,
            "test_error_%": 100.0 * r["test_error"],
            **{c: r.get(key) for c, key in run_metrics.items()},
            "train_loss": r["loss"],
            "seconds": r["seconds"],
            "resumed_from_epoch": int(r["resumed_from_epoch"]),
        }
        for (dataset, arch, method, seed), r in runs.items()
    ]
    paths["runs_md"], paths["runs_csv"] = write_tables(
        run_rows,
        stem.with_name(stem.name + "_runs"),
        header_lines,
        digits=digits,
        title="Classification: every run",
    )
    paths["epochs_csv"] = atomic_write_text(
        stem.with_name(stem.name + "_epochs.csv"),
        history_csv(histories, ("dataset", "arch", "method", "seed")),
    )
    plots: list[Path] = []
    for dataset, arch in dict.fromkeys(k[:2] for k in histories):
        per_method = {
            method_names[k[2]]: [h for kk, h in histories.items() if kk[:3] == k[:3]]
            for k in histories
            if k[:2] == (dataset, arch)
        }
        png = stem.with_name(f"{stem.name}_nc_{dataset}_{arch}.png")
        plots.append(
            plot_collapse(
                per_method,
                png,
                metrics=plotted,
                title=f"Neural collapse per epoch: {dataset}, {arch} (train features)",
            )
        )
        paths[f"plot_{dataset}_{arch}"] = png
    images = "\n".join(f"![{p.stem}]({p.name})" for p in plots)
    page = "\n\n".join(sections) + "\n## Collapse per epoch\n\n" + images + "\n"
    paths["md"] = atomic_write_text(stem.with_name(stem.name + ".md"), page)
    return paths, page
