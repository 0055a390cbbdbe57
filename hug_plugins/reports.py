"""The multi-file report of a CE-vs-HUG comparison job: tables, every run, epochs and plots.

:func:`write_comparison_report` writes what ``integrations/classification.py`` produces from
its runs: one summary table per comparison (:func:`hug_plugins.train.comparison.summary_rows`
rows), the every-run table, the per-epoch history CSV, one collapse plot per (dataset, arch)
and a combined markdown page that shows the tables and the plots. Every file is written
atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hug_plugins.io import PathLike, atomic_write_text
from hug_plugins.plots import plot_collapse
from hug_plugins.tables import history_csv, write_tables

__all__ = ["RunKey", "write_comparison_report"]

RunKey = tuple[str, str, str, int]
"""``(dataset, arch, method, seed)`` of one run."""


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
