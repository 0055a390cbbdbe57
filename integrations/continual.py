"""Class-incremental continual learning: experience replay with cross-entropy vs replay + HUG.

Split-digits (quick), Split-MNIST and Split-CIFAR-10 in 5 experiences of 2 classes each
(Split-CIFAR-100: 20 each), the class order drawn from the seed. Two methods share the backbone
(same init per seed), the optimizer, the epochs, the minibatch sizes and the replay memory
(Avalanche's class-balanced buffer, replayed samples concatenated to every minibatch):

* ``er_ce``: :class:`hug_plugins.continual.ReplayMemoryPlugin` (Avalanche's ``ReplayPlugin``
  with the 0.6.0 traps fixed), a linear classifier and cross-entropy;
* ``er_hug``: :class:`hug_plugins.continual.HUGPlugin`, a nearest-proxy cosine classifier with
  one static optimized proxy per class of the whole stream, trained with the HUG loss alone.

Reported after the last experience, mean +- std over seeds, per memory size: the class-IL
accuracy over all seen classes (Avalanche's stream accuracy on the whole test stream), the
average forgetting (both Avalanche's ``StreamForgetting`` and the matrix definition
``mean_{j<T} max_{i<T} a[i, j] - a[T, j]``) and the accuracy matrix ``a[i, j]`` (accuracy on the
test data of experience ``j`` after training experience ``i``). Markdown and CSV tables are
written atomically; Avalanche's ``EvaluationPlugin`` computes the metrics and a ``TextLogger``
records each run.

Usage::

    python integrations/continual.py --preset quick
    python integrations/continual.py --preset mnist --data-root ../shared/data
    python integrations/continual.py --preset cifar10 --data-root ../shared/data seeds=[0,1,2]

``--data-root`` holds ``mnist/MNIST/raw`` (torchvision layout) and ``cifar10-jpeg/{train,test}``
(ImageFolder); nothing is downloaded. Any config key can be overridden as ``key=value``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
from harness.config import parse_cli, to_dict
from harness.continual.runs import (
    continual_settings_tag,
    hug_plugin_options,
    load_stream_tensors,
    run_class_incremental,
    stream_settings,
)
from harness.continual.streams import class_incremental_tensors
from harness.io import RunLog
from harness.tables import standard_header_lines, summarize, summarize_runs, write_tables
from omegaconf import OmegaConf

TASK = "continual"


def _eta(start: float, fresh: int, remaining: int) -> str:
    """Time left at the pace of the runs trained in this invocation."""
    if fresh == 0:
        return "? left"
    return f"{(time.perf_counter() - start) / fresh * remaining / 60:.0f} min left"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Runs the benchmark; returns the summary rows."""
    args = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_cli(args, TASK, description=__doc__.splitlines()[0] if __doc__ else None)
    if cfg.num_threads is not None:
        torch.set_num_threads(int(cfg.num_threads))
    avalanche_split = str(cfg.data.name) == "splitmnist"
    if avalanche_split:
        if not cfg.data.root:
            raise ValueError("the splitmnist preset needs --data-root (or data.root=...)")
        shape: tuple[int, ...] = (1, 28, 28)
    else:
        d = cfg.data
        train, test, shape = load_stream_tensors(
            str(d.name),
            None if d.root is None else str(d.root),
            split_seed=int(d.split_seed),
            train_per_class=d.train_per_class,
            test_per_class=d.test_per_class,
        )
    settings = stream_settings(cfg)
    stem = Path(str(cfg.output_dir)) / str(cfg.output_name)
    log_path = stem.with_name(stem.name + "_log.txt")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as log:  # a resumed job keeps the earlier log
        log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} config\n{OmegaConf.to_yaml(cfg)}")
    methods = [str(m) for m in cfg.methods]
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    run_rows: list[dict[str, Any]] = []
    # Finished runs are kept one per line: a killed job resumes with the next run.
    # Keyed by the settings tag too: a changed recipe is run anew, never served an old result.
    tag = continual_settings_tag(to_dict(cfg))
    run_log = RunLog(
        stem.with_name(stem.name + "_done.jsonl"), ("method", "mem_size", "seed", "settings")
    )
    total = len(cfg.seeds) * len(cfg.mem_sizes) * len(methods)
    job_start = time.perf_counter()
    fresh = 0
    for seed in [int(s) for s in cfg.seeds]:
        if avalanche_split:  # Avalanche's own generator: torchvision MNIST under the root
            from avalanche.benchmarks.classic import SplitMNIST

            benchmark = SplitMNIST(
                n_experiences=int(cfg.num_experiences),
                seed=seed,
                dataset_root=str(Path(str(cfg.data.root)) / "mnist"),
            )
        else:
            benchmark = class_incremental_tensors(
                train, test, num_experiences=int(cfg.num_experiences), seed=seed
            )
        for mem_size in [int(m) for m in cfg.mem_sizes]:
            for method in methods:
                key = {"method": method, "mem_size": mem_size, "seed": seed, "settings": tag}
                restored = run_log.done(key)
                if restored:
                    res = run_log.get(key)
                else:
                    res = run_class_incremental(
                        benchmark,
                        shape,
                        method,
                        mem_size,
                        seed,
                        settings,
                        hug_plugin_options(cfg.hug) if method == "er_hug" else None,
                        log_path,
                    )
                    run_log.append({**key, **res})
                    fresh += 1
                results.setdefault((method, mem_size), []).append(res)
                run_rows.append(
                    {
                        "method": method,
                        "mem_size": mem_size,
                        "seed": seed,
                        "class_order": " ".join(map(str, benchmark.classes_order)),
                        "acc": res["acc"],
                        "forgetting": res["forgetting"],
                        "forgetting_avalanche": res["forgetting_avalanche"],
                        "seconds": res["seconds"],
                    }
                )
                print(
                    f"[{cfg.data.name}] {method:7s} mem={mem_size:5d} seed={seed} "
                    f"acc={res['acc']:.2f} forgetting={res['forgetting']:.2f} "
                    f"({res['seconds']:.1f}s{', restored' if restored else ''}); "
                    f"run {len(run_rows)}/{total}, "
                    f"~{_eta(job_start, fresh, total - len(run_rows))}",
                    flush=True,
                )
    sizes = (
        "Avalanche SplitMNIST: 60000 train / 10000 test"
        if avalanche_split
        else f"{len(train[1])} train / {len(test[1])} test"
    )
    header = [
        *standard_header_lines(["integrations/continual.py", *args]),
        f"Data: {cfg.data.name} ({sizes}), "
        f"{cfg.num_experiences} experiences, class order from the seed; model {cfg.model.kind} "
        f"(feature dim {cfg.model.feature_dim}); SGD lr {cfg.trainer.lr} momentum "
        f"{cfg.trainer.momentum}, {cfg.trainer.epochs} epochs/experience, minibatch "
        f"{cfg.trainer.batch_size} + {cfg.replay.batch_size_mem} replayed; "
        f"{cfg.replay.storage_policy} buffer; HUGPlugin options "
        f"{hug_plugin_options(cfg.hug) or 'none (the defaults)'}.",
        "acc: class-IL accuracy (%) on the whole test stream after the last experience; "
        "forgetting: mean over j < T of max_i a[i,j] - a[T,j] (%); forgetting_avalanche: "
        "Avalanche StreamForgetting (%); *_vs_CE: paired per-seed difference to er_ce (points). "
        "seconds: per run. Mean ± std over seeds " + str(list(cfg.seeds)) + ".",
    ]
    metrics = ["acc", "forgetting", "forgetting_avalanche", "seconds"]
    paired = {"acc": "acc_vs_CE", "forgetting": "forgetting_vs_CE"}
    rows = [
        {"dataset": str(cfg.data.name), **row}
        for row in summarize_runs(
            run_rows, ["method", "mem_size"], metrics, paired=paired, baseline={"method": "er_ce"}
        )
    ]
    matrix_rows: list[dict[str, Any]] = []
    for (method, mem_size), runs in results.items():
        num_exp = len(runs[0]["matrix"])
        for i in range(num_exp):
            row: dict[str, Any] = {"method": method, "mem_size": mem_size, "after_exp": i}
            for j in range(num_exp):
                row[f"exp{j}"] = tuple(summarize(100.0 * r["matrix"][i][j] for r in runs))
            matrix_rows.append(row)
    md, csv = write_tables(rows, stem, header, title="Class-incremental replay: CE vs HUG")
    write_tables(
        matrix_rows,
        stem.with_name(stem.name + "_matrix"),
        [*header, "a[i, j]: accuracy (%) on experience j's test data after training experience i."],
        title="Accuracy matrix",
        digits=1,
    )
    write_tables(run_rows, stem.with_name(stem.name + "_runs"), header, title="Per-seed runs")
    print(md.read_text(encoding="utf-8"))
    print(f"wrote {md}, {csv} (+ _matrix, _runs tables, _log.txt)")
    return rows


if __name__ == "__main__":
    main()
