"""One class-incremental run: experience replay with cross-entropy or with HUG, on a stream.

What ``integrations/continual.py`` repeats over methods, memory sizes and seeds:
:func:`load_stream_tensors` (the data layer's digits, MNIST or CIFAR-10 as standardized
in-memory tensors), :func:`stream_backbone` (the shared feature extractor) and
:func:`run_class_incremental` (Avalanche's ``Naive`` strategy with
:class:`~hug_plugins.continual.ReplayMemoryPlugin` and a linear head, or
:class:`~hug_plugins.continual.HUGPlugin`; Avalanche's ``EvaluationPlugin`` computes the
accuracy matrix and forgetting).

Example:
    >>> from harness.continual.streams import class_incremental_tensors
    >>> train, test, shape = load_stream_tensors("digits")
    >>> benchmark = class_incremental_tensors(train, test, num_experiences=5, seed=0)
    >>> settings = StreamSettings(feature_dim=16, hidden=32, epochs=1)
    >>> result = run_class_incremental(benchmark, shape, "er_hug", 50, 0, settings)
    >>> len(result["matrix"]), 0.0 <= result["acc"] <= 100.0
    (5, True)
"""

from __future__ import annotations

import math
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics, loss_metrics
from avalanche.logging import InteractiveLogger, TextLogger
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive
from torch import Tensor, nn

from harness.data import load_digits_split, load_image_dataset
from harness.train.checkpoints import settings_tag
from harness.train.runtime import resolve_device
from hug_plugins.continual.plugin import HUGPlugin
from hug_plugins.continual.replay import ReplayMemoryPlugin
from hug_plugins.losses import HUGConfig, preset_config

__all__ = [
    "METHODS",
    "StreamSettings",
    "continual_settings_tag",
    "hug_plugin_options",
    "load_stream_tensors",
    "run_class_incremental",
    "stream_backbone",
    "stream_settings",
]

METHODS = ("er_ce", "er_hug")
"""``er_ce``: replay + linear head + cross-entropy; ``er_hug``: :class:`HUGPlugin`."""

_EXP_KEY = re.compile(r"Top1_Acc_Exp/eval_phase/test_stream/(?:Task\d+/)?Exp(\d+)$")
_STREAM_ACC = "Top1_Acc_Stream/eval_phase/test_stream/Task000"
_STREAM_FORGET = "StreamForgetting/eval_phase/test_stream"

TensorPair = tuple[Tensor, Tensor]


def _standardized(dataset: Any, mean: tuple[float, ...], std: tuple[float, ...]) -> TensorPair:
    """Float images standardized with the training set's channel statistics, and labels."""
    shape = (1, -1, 1, 1)
    m, s = torch.tensor(mean).view(shape), torch.tensor(std).view(shape)
    images = (dataset.images.float().div(255.0) - m) / s
    return images.contiguous(), dataset.targets.long()


def _cap_per_class(x: Tensor, y: Tensor, cap: int | None, seed: int) -> TensorPair:
    """At most ``cap`` random samples per class (original order kept)."""
    if cap is None:
        return x, y
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for c in sorted(set(y.tolist())):
        idx = torch.nonzero(y == c).flatten()
        keep.append(idx[torch.randperm(len(idx), generator=gen)[:cap]])
    index = torch.cat(keep).sort().values
    return x[index], y[index]


def load_stream_tensors(
    name: str,
    root: str | None = None,
    *,
    split_seed: int = 0,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
) -> tuple[TensorPair, TensorPair, tuple[int, ...]]:
    """``(train, test, input_shape)`` as in-memory tensors for a class-incremental stream.

    Digits are the flat ``[0, 1]`` vectors of :func:`~harness.data.load_digits_split`; MNIST
    (flattened) and CIFAR-10 / CIFAR-100 images are standardized with the training set's
    channel statistics. ``train_per_class`` / ``test_per_class`` cap the samples per class.

    Args:
        name: ``"digits"``, ``"mnist"``, ``"cifar10"`` or ``"cifar100"``.
        root: Data root (not for digits).
        split_seed: Digits train/test split seed.
        train_per_class: Per-class cap of the training set (``None``: all).
        test_per_class: Per-class cap of the test set.

    Returns:
        ``((x_train, y_train), (x_test, y_test), input_shape)``.
    """
    names = ("digits", "mnist", "cifar10", "cifar100")
    if name not in names:
        raise ValueError(f"data.name must be one of {list(names)}, got {name!r}")
    if name == "digits":
        tr, te = load_digits_split(seed=split_seed)
        train, test = (tr.tensors[0], tr.tensors[1]), (te.tensors[0], te.tensors[1])
        shape: tuple[int, ...] = (64,)
    else:
        if not root:
            raise ValueError(f"the {name} preset needs --data-root (or data.root=...)")
        images_train, images_test, info = load_image_dataset(name, root)
        train, test = (_standardized(d, info.mean, info.std) for d in (images_train, images_test))
        shape = (784,) if name == "mnist" else (3, 32, 32)
        if name == "mnist":
            train, test = (train[0].flatten(1), train[1]), (test[0].flatten(1), test[1])
    train = _cap_per_class(*train, train_per_class, 0)
    test = _cap_per_class(*test, test_per_class, 1)
    return train, test, shape


def stream_backbone(kind: str, shape: tuple[int, ...], hidden: int, feature_dim: int) -> nn.Module:
    """The shared feature extractor: an MLP (flat inputs) or a small ConvNet (images).

    ``"mlp"``: ``in -> hidden -> hidden -> feature_dim``; ``"cnn"``: four conv-BN-ReLU blocks of
    width ``hidden``, ``2 hidden``, ``4 hidden``, ``4 hidden`` (max-pools between), global
    average pool, linear to ``feature_dim``.

    Example:
        >>> stream_backbone("mlp", (64,), 32, 8)(torch.rand(2, 64)).shape
        torch.Size([2, 8])
    """
    if kind == "mlp":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(shape), hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, feature_dim),
        )
    if kind == "cnn":

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

        return nn.Sequential(
            *block(shape[0], hidden),
            nn.MaxPool2d(2),
            *block(hidden, 2 * hidden),
            nn.MaxPool2d(2),
            *block(2 * hidden, 4 * hidden),
            nn.MaxPool2d(2),
            *block(4 * hidden, 4 * hidden),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * hidden, feature_dim),
        )
    raise ValueError(f"model.kind must be 'mlp' or 'cnn', got {kind!r}")


@dataclass(frozen=True)
class StreamSettings:
    """Model, optimizer and replay settings shared by both methods of a run.

    Attributes:
        kind: Backbone kind (:func:`stream_backbone`).
        hidden: Backbone width.
        feature_dim: Feature dimension.
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        batch_size: Minibatch of the current experience.
        epochs: Epochs per experience.
        eval_batch_size: Evaluation minibatch.
        storage_policy: Replay buffer policy.
        batch_size_mem: Replayed samples joined to every minibatch.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        interactive: Add Avalanche's ``InteractiveLogger``.
    """

    kind: str = "mlp"
    hidden: int = 128
    feature_dim: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 64
    epochs: int = 1
    eval_batch_size: int = 512
    storage_policy: str = "class_balanced"
    batch_size_mem: int = 64
    device: str = "auto"
    interactive: bool = False


def stream_settings(cfg: Mapping[str, Any]) -> StreamSettings:
    """The run settings of a continual job config's ``model``, ``trainer``, ``replay`` and
    ``log`` sections (``configs/continual/*.yaml``)."""
    m, t, r = cfg["model"], cfg["trainer"], cfg["replay"]
    return StreamSettings(
        kind=str(m["kind"]),
        hidden=int(m["hidden"]),
        feature_dim=int(m["feature_dim"]),
        lr=float(t["lr"]),
        momentum=float(t["momentum"]),
        weight_decay=float(t["weight_decay"]),
        batch_size=int(t["batch_size"]),
        epochs=int(t["epochs"]),
        eval_batch_size=int(t["eval_batch_size"]),
        storage_policy=str(r["storage_policy"]),
        batch_size_mem=int(r["batch_size_mem"]),
        device=str(t["device"]),
        interactive=bool(cfg["log"]["interactive"]),
    )


def hug_plugin_options(hug: Mapping[str, Any]) -> dict[str, Any]:
    """``HUGPlugin`` keyword arguments from a continual job's ``hug`` section.

    ``preset`` (a :func:`~hug_plugins.losses.preset_config` name) with ``loss`` overrides
    replaces the plugin's loss; ``proxy_mode`` passes through, ``ce_weight`` and ``scale``
    (the logit scale) override the loss. A null keeps the plugin default; all null: the
    README's ``HUGPlugin(...)``.

    Raises:
        ValueError: If ``loss`` overrides are given without a ``preset``.

    Example:
        >>> hug_plugin_options({"preset": None, "loss": {"alpha": None}, "scale": 8})
        {'logit_scale': 8.0}
    """
    options: dict[str, Any] = {}
    loss = hug.get("loss") or {}
    overrides = {k: v for k, v in loss.items() if v is not None}
    if hug.get("preset") is not None:
        options["config"] = preset_config(str(hug["preset"]), **overrides)
    elif overrides:
        raise ValueError("hug.loss overrides need hug.preset (null keeps the plugin's loss)")
    if hug.get("proxy_mode") is not None:
        options["proxy_mode"] = hug["proxy_mode"]
    if hug.get("ce_weight") is not None:
        options["ce_weight"] = float(hug["ce_weight"])
    if hug.get("scale") is not None:
        options["logit_scale"] = float(hug["scale"])
    return options


def continual_settings_tag(cfg: Mapping[str, Any]) -> str:
    """Hash of what changes a continual job's run besides its method, memory size and seed: the
    data (not its path), the number of experiences, the :func:`stream_settings` (not the device
    or the logging), the ``hug`` section and the HUG recipe it resolves to (so that a new
    default recipe is a new run, not a reloaded one). Keys the job's log of finished runs.

    Example:
        >>> from harness.config import load_config, to_dict
        >>> job = to_dict(load_config("continual", "quick"))
        >>> tag = continual_settings_tag(job)
        >>> continual_settings_tag({**job, "data": {**job["data"], "root": "/x"}}) == tag
        True
        >>> continual_settings_tag({**job, "num_experiences": 2}) == tag
        False
    """
    settings = asdict(stream_settings(cfg))
    for key in ("device", "interactive"):
        settings.pop(key)
    options = hug_plugin_options(cfg["hug"])
    recipe = options.pop("config", HUGConfig())  # the plugin's default loss when no preset
    return settings_tag(
        {
            "data": {k: v for k, v in cfg["data"].items() if k != "root"},
            "num_experiences": cfg["num_experiences"],
            "stream": settings,
            "hug": cfg["hug"],
            "hug_plugin_options": options,
            "hug_recipe": asdict(recipe),
        }
    )


def _strategy(
    model: nn.Module,
    criterion: nn.Module | HUGPlugin,
    replay: ReplayMemoryPlugin,
    s: StreamSettings,
    log_file: TextIO | None,
) -> Any:
    loggers: list[Any] = [] if log_file is None else [TextLogger(log_file)]
    if s.interactive:
        loggers.append(InteractiveLogger())
    evaluator = EvaluationPlugin(
        accuracy_metrics(experience=True, stream=True),
        forgetting_metrics(experience=True, stream=True),
        loss_metrics(stream=True),
        loggers=loggers,
    )
    optimizer = torch.optim.SGD(
        model.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay
    )
    return Naive(
        model=model,
        optimizer=optimizer,
        criterion=criterion,
        train_mb_size=s.batch_size,
        train_epochs=s.epochs,
        eval_mb_size=s.eval_batch_size,
        device=resolve_device(s.device),
        plugins=[replay],
        evaluator=evaluator,
    )


def run_class_incremental(
    benchmark: Any,
    shape: tuple[int, ...],
    method: str,
    mem_size: int,
    seed: int,
    settings: StreamSettings,
    hug_options: Mapping[str, Any] | None = None,
    log_path: Path | None = None,
) -> dict[str, Any]:
    """Trains one method on the stream; returns its accuracy matrix and final metrics.

    Both methods build the backbone from the same seed (same initialization), then
    ``er_ce`` adds a linear head and cross-entropy, ``er_hug`` the :class:`HUGPlugin` as the
    criterion (``hug_options`` are its keyword arguments; none: the README's
    ``HUGPlugin(num_classes, feature_dim)``); both replay with :class:`ReplayMemoryPlugin`.
    Prints a progress line per experience with the time left.

    Args:
        benchmark: An Avalanche class-incremental benchmark.
        shape: Input shape of one sample.
        method: One of :data:`METHODS`.
        mem_size: Replay memory size.
        seed: Seed of the weights, the plugin and Avalanche's RNGs.
        settings: Model, optimizer and replay settings.
        hug_options: Extra :class:`HUGPlugin` keyword arguments.
        log_path: Avalanche ``TextLogger`` file (appended; ``None``: no log).

    Returns:
        ``{"matrix", "acc", "acc_mean_exp", "forgetting", "forgetting_avalanche", "seconds"}``:
        ``matrix[i][j]`` is the accuracy on experience ``j`` after training experience ``i``,
        ``acc`` the class-IL stream accuracy (%), ``forgetting`` the mean over ``j < T`` of
        ``max_i a[i, j] - a[T, j]`` (%).
    """
    num_classes, s = int(benchmark.n_classes), settings
    torch.manual_seed(seed)
    backbone = stream_backbone(s.kind, shape, s.hidden, s.feature_dim)
    criterion: nn.Module | HUGPlugin
    if method == "er_hug":
        criterion = HUGPlugin(num_classes, s.feature_dim, seed=seed, **dict(hug_options or {}))
        head: nn.Module = criterion.head
    elif method == "er_ce":
        criterion = nn.CrossEntropyLoss()
        head = nn.Linear(s.feature_dim, num_classes)
    else:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS}")
    # The same replay for both methods: Avalanche's ReplayPlugin on a storage policy.
    replay = ReplayMemoryPlugin(
        mem_size, storage_policy=s.storage_policy, batch_size_mem=s.batch_size_mem
    )
    model = nn.Sequential(backbone, head)
    log_file: TextIO | None = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed below
        log_file.write(f"\n=== {method} mem_size={mem_size} seed={seed} ===\n")
    try:
        strategy = _strategy(model, criterion, replay, s, log_file)
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
    finally:
        if log_file is not None:
            log_file.close()
    last = num_exp - 1
    forgetting = [max(matrix[i][j] for i in range(j, last)) - matrix[last][j] for j in range(last)]
    stream_acc: Any = metrics.get(_STREAM_ACC, metrics.get(_STREAM_ACC.rsplit("/", 1)[0]))
    return {
        "matrix": matrix,
        "acc": 100.0 * float(stream_acc),
        "acc_mean_exp": 100.0 * sum(matrix[last]) / num_exp,
        "forgetting": 100.0 * sum(forgetting) / len(forgetting),
        "forgetting_avalanche": 100.0 * float(metrics[_STREAM_FORGET]),
        "seconds": seconds,
    }
