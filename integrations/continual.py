"""Class-incremental continual learning: experience replay with cross-entropy vs replay + HUG.

Split-digits (quick), Split-MNIST and Split-CIFAR-10 in 5 experiences of 2 classes each, the
class order drawn from the seed. Two methods share the backbone (same init per seed), the
optimizer, the epochs, the minibatch sizes and the replay memory (Avalanche's class-balanced
buffer, replayed samples concatenated to every minibatch):

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

import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch
from avalanche.evaluation.metrics import (
    accuracy_metrics,
    forgetting_metrics,
    loss_metrics,
)
from avalanche.logging import InteractiveLogger, TextLogger
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from hug_plugins.config import parse_cli, set_values
from hug_plugins.continual import (
    HUGPlugin,
    ReplayMemoryPlugin,
    class_incremental_tensors,
)
from hug_plugins.data import load_image_dataset
from hug_plugins.io import RunLog
from hug_plugins.losses import preset_config
from hug_plugins.tables import standard_header_lines, summarize, write_tables

TASK = "continual"
METHODS = ("er_ce", "er_hug")
_EXP_KEY = re.compile(r"Top1_Acc_Exp/eval_phase/test_stream/(?:Task\d+/)?Exp(\d+)$")
_STREAM_ACC = "Top1_Acc_Stream/eval_phase/test_stream/Task000"
_STREAM_FORGET = "StreamForgetting/eval_phase/test_stream"


# ---------------------------------------------------------------------------- data


def _digits(cfg: DictConfig) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], tuple[int]]:
    from hug_plugins.data import load_digits_split

    train, test = load_digits_split(seed=int(cfg.data.split_seed))
    return (train.tensors[0], train.tensors[1]), (test.tensors[0], test.tensors[1]), (64,)


def _mnist(cfg: DictConfig) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], tuple[int]]:
    train, test, info = load_image_dataset("mnist", str(cfg.data.root))
    (x_train, y_train), (x_test, y_test) = (_normalized(d, info) for d in (train, test))
    return (x_train.flatten(1), y_train), (x_test.flatten(1), y_test), (784,)


def _cifar10(
    cfg: DictConfig,
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], tuple[int, int, int]]:
    train, test, info = load_image_dataset("cifar10", str(cfg.data.root))
    return _normalized(train, info), _normalized(test, info), (3, 32, 32)


def _normalized(dataset: Any, info: Any) -> tuple[Tensor, Tensor]:
    """Float images standardized with the training set's channel statistics, and labels."""
    shape = (1, -1, 1, 1)
    mean, std = torch.tensor(info.mean).view(shape), torch.tensor(info.std).view(shape)
    images = (dataset.images.float().div(255.0) - mean) / std
    return images.contiguous(), dataset.targets.long()


def _cap_per_class(x: Tensor, y: Tensor, cap: int | None, seed: int) -> tuple[Tensor, Tensor]:
    if cap is None:
        return x, y
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for c in sorted(set(y.tolist())):
        idx = torch.nonzero(y == c).flatten()
        keep.append(idx[torch.randperm(len(idx), generator=gen)[:cap]])
    index = torch.cat(keep).sort().values
    return x[index], y[index]


def load_data(
    cfg: DictConfig,
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], tuple[int, ...]]:
    """Loads the preset's dataset as in-memory tensors (optionally capped per class)."""
    name = str(cfg.data.name)
    loaders = {"digits": _digits, "mnist": _mnist, "cifar10": _cifar10}
    if name not in loaders:
        raise ValueError(f"data.name must be one of {sorted(loaders)}, got {name!r}")
    if name != "digits" and not cfg.data.root:
        raise ValueError(f"the {name} preset needs --data-root (or data.root=...)")
    train, test, shape = loaders[name](cfg)
    train = _cap_per_class(*train, cfg.data.train_per_class, 0)
    test = _cap_per_class(*test, cfg.data.test_per_class, 1)
    return train, test, shape


# ---------------------------------------------------------------------------- models


def make_backbone(cfg: DictConfig, shape: tuple[int, ...]) -> nn.Module:
    """The shared feature extractor: an MLP (flat inputs) or a small ConvNet (images)."""
    dim = int(cfg.model.feature_dim)
    if cfg.model.kind == "mlp":
        hidden = int(cfg.model.hidden)
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(shape), hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, dim),
        )
    if cfg.model.kind == "cnn":
        width = int(cfg.model.hidden)

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

        return nn.Sequential(
            *block(shape[0], width),
            nn.MaxPool2d(2),
            *block(width, 2 * width),
            nn.MaxPool2d(2),
            *block(2 * width, 4 * width),
            nn.MaxPool2d(2),
            *block(4 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * width, dim),
        )
    raise ValueError(f"model.kind must be 'mlp' or 'cnn', got {cfg.model.kind!r}")


def _device(cfg: DictConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(str(cfg.device))


# ---------------------------------------------------------------------------- one run


def hug_plugin_options(hug: DictConfig) -> dict[str, Any]:
    """``HUGPlugin`` keyword arguments from the ``hug`` section; null keeps the plugin default.

    ``hug.preset`` (a :func:`~hug_plugins.losses.preset_config` name) with ``hug.loss``
    overrides replaces the plugin's loss; ``proxy_mode``, ``weight`` (``hug_weight``),
    ``ce_weight`` and ``scale`` pass through. All null: the README's ``HUGPlugin(...)``.
    """
    options: dict[str, Any] = {}
    overrides = set_values(hug.get("loss"))
    if hug.get("preset") is not None:
        options["hug"] = preset_config(str(hug.preset), **overrides)
    elif overrides:
        raise ValueError("hug.loss overrides need hug.preset (null keeps the plugin's loss)")
    names = {"proxy_mode": "proxy_mode", "weight": "hug_weight", "ce_weight": "ce_weight"}
    for key, name in names.items():
        if hug.get(key) is not None:
            options[name] = hug[key]
    if hug.get("scale") is not None:
        options["scale"] = float(hug.scale)
    return options


def run_one(
    cfg: DictConfig,
    benchmark: Any,
    shape: tuple[int, ...],
    method: str,
    mem_size: int,
    seed: int,
    log_path: Path,
) -> dict[str, Any]:
    """Trains one method on the stream and returns its accuracy matrix and final metrics."""
    num_classes = int(benchmark.n_classes)
    torch.manual_seed(seed)
    backbone = make_backbone(cfg, shape)  # same init for both methods at a given seed
    plugin: ReplayMemoryPlugin
    if method == "er_hug":
        plugin = HUGPlugin(
            num_classes,
            int(cfg.model.feature_dim),
            mem_size=mem_size,
            storage_policy=str(cfg.replay.storage_policy),
            batch_size_mem=int(cfg.replay.batch_size_mem),
            seed=seed,
            **hug_plugin_options(cfg.hug),
        )
        head: nn.Module = plugin.head
    elif method == "er_ce":
        plugin = ReplayMemoryPlugin(
            mem_size,
            storage_policy=str(cfg.replay.storage_policy),
            batch_size_mem=int(cfg.replay.batch_size_mem),
        )
        head = nn.Linear(int(cfg.model.feature_dim), num_classes)
    else:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS}")
    model = nn.Sequential(backbone, head)
    t = cfg.train
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=float(t.lr),
        momentum=float(t.momentum),
        weight_decay=float(t.weight_decay),
    )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log_file:
        log_file.write(f"\n=== {method} mem_size={mem_size} seed={seed} ===\n")
        loggers: list[Any] = [TextLogger(log_file)]
        if cfg.log.interactive:
            loggers.append(InteractiveLogger())
        evaluator = EvaluationPlugin(
            accuracy_metrics(experience=True, stream=True),
            forgetting_metrics(experience=True, stream=True),
            loss_metrics(stream=True),
            loggers=loggers,
        )
        strategy = Naive(
            model=model,
            optimizer=optimizer,
            criterion=nn.CrossEntropyLoss(),
            train_mb_size=int(t.batch_size),
            train_epochs=int(t.epochs),
            eval_mb_size=int(t.eval_batch_size),
            device=_device(cfg),
            plugins=[plugin],
            evaluator=evaluator,
        )
        RNGManager.set_random_seeds(seed)
        num_exp = len(benchmark.train_stream)
        matrix = [[0.0] * num_exp for _ in range(num_exp)]
        start = time.perf_counter()
        metrics: dict[str, Any] = {}
        for i, experience in enumerate(benchmark.train_stream):
            strategy.train(experience, eval_streams=[])
            metrics = strategy.eval(benchmark.test_stream)
            for key, value in metrics.items():
                match = _EXP_KEY.search(key)
                if match:
                    matrix[i][int(match.group(1))] = float(value)
            elapsed = time.perf_counter() - start
            left = elapsed / (i + 1) * (num_exp - i - 1)
            print(
                f"  {method} mem={mem_size} seed={seed}: experience {i + 1}/{num_exp}, "
                f"mean seen-class accuracy {100.0 * sum(matrix[i][: i + 1]) / (i + 1):.1f} %, "
                f"{elapsed:.0f} s, ~{left:.0f} s left in this run",
                file=sys.stderr,
                flush=True,
            )
        seconds = time.perf_counter() - start
    last = num_exp - 1
    forgetting = [max(matrix[i][j] for i in range(j, last)) - matrix[last][j] for j in range(last)]
    stream_acc = metrics.get(_STREAM_ACC, metrics.get(_STREAM_ACC.rsplit("/", 1)[0]))
    return {
        "matrix": matrix,
        "acc": 100.0 * float(stream_acc),
        "acc_mean_exp": 100.0 * sum(matrix[last]) / num_exp,
        "forgetting": 100.0 * sum(forgetting) / len(forgetting),
        "forgetting_avalanche": 100.0 * float(metrics[_STREAM_FORGET]),
        "seconds": seconds,
    }


# ---------------------------------------------------------------------------- main


def _eta(start: float, fresh: int, remaining: int) -> str:
    """Time left at the pace of the runs trained in this invocation."""
    if fresh == 0:
        return "? left"
    return f"{(time.perf_counter() - start) / fresh * remaining / 60:.0f} min left"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Runs the benchmark; returns the summary rows."""
    args = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_cli(args, TASK, description=__doc__.splitlines()[0] if __doc__ else None)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    avalanche_split = str(cfg.data.name) == "splitmnist"
    if avalanche_split:
        if not cfg.data.root:
            raise ValueError("the splitmnist preset needs --data-root (or data.root=...)")
        shape: tuple[int, ...] = (1, 28, 28)
    else:
        train, test, shape = load_data(cfg)
    out_dir = Path(str(cfg.output.dir))
    stem = out_dir / str(cfg.output.stem)
    log_path = stem.with_name(stem.name + "_log.txt")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(OmegaConf.to_yaml(cfg), encoding="utf-8")
    methods = [str(m) for m in cfg.methods]
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    run_rows: list[dict[str, Any]] = []
    # Finished runs are kept one per line: a killed job resumes with the next run.
    run_log = RunLog(stem.with_name(stem.name + "_done.jsonl"), ("method", "mem_size", "seed"))
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
                key = {"method": method, "mem_size": mem_size, "seed": seed}
                restored = run_log.done(key)
                if restored:
                    res = run_log.get(key)
                else:
                    res = run_one(cfg, benchmark, shape, method, mem_size, seed, log_path)
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
        f"(feature dim {cfg.model.feature_dim}); SGD lr {cfg.train.lr} momentum "
        f"{cfg.train.momentum}, {cfg.train.epochs} epochs/experience, minibatch "
        f"{cfg.train.batch_size} + {cfg.replay.batch_size_mem} replayed; "
        f"{cfg.replay.storage_policy} buffer; HUGPlugin options "
        f"{hug_plugin_options(cfg.hug) or 'none (the defaults)'}.",
        "acc: class-IL accuracy (%) on the whole test stream after the last experience; "
        "forgetting: mean over j < T of max_i a[i,j] - a[T,j] (%); forgetting_avalanche: "
        "Avalanche StreamForgetting (%). Mean ± std over seeds " + str(list(cfg.seeds)) + ".",
    ]
    rows: list[dict[str, Any]] = []
    matrix_rows: list[dict[str, Any]] = []
    for (method, mem_size), runs in results.items():
        rows.append(
            {
                "dataset": str(cfg.data.name),
                "method": method,
                "mem_size": mem_size,
                "acc": tuple(summarize(r["acc"] for r in runs)),
                "forgetting": tuple(summarize(r["forgetting"] for r in runs)),
                "forgetting_avalanche": tuple(summarize(r["forgetting_avalanche"] for r in runs)),
                "seeds": len(runs),
                "seconds_per_run": tuple(summarize(r["seconds"] for r in runs)),
            }
        )
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
