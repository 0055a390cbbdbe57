"""Class-incremental streams from in-memory tensors, and strategy checkpoints that resume."""

from __future__ import annotations

import io
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from avalanche.checkpointing import maybe_load_checkpoint, save_checkpoint
from torch import Tensor

from harness.io import atomic_write_bytes

__all__ = ["class_incremental_tensors", "load_strategy_checkpoint", "save_strategy_checkpoint"]


def class_incremental_tensors(
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    num_experiences: int,
    seed: int | None = 0,
    class_order: list[int] | None = None,
) -> Any:
    """A class-incremental Avalanche benchmark from in-memory tensors.

    Built with ``avalanche.benchmarks.scenarios.supervised.class_incremental_benchmark`` from
    ``ClassificationDataset`` s that carry ``targets`` but no task labels (the plain case that
    trips ``ClassBalancedBuffer``). The class order is a permutation drawn from ``seed`` with a
    private generator (the global RNG is not touched) unless ``class_order`` is given.

    Args:
        train: ``(x, y)`` training tensors, ``y`` integer labels in ``[0, C)``.
        test: ``(x, y)`` test tensors with the same classes.
        num_experiences: Number of experiences (``C`` must be divisible by it).
        seed: Seed of the class order.
        class_order: Explicit class order (overrides ``seed``).

    Returns:
        The ``CLScenario``, with ``n_classes`` and ``classes_order`` attributes set.

    Raises:
        ValueError: On mismatched classes or an indivisible number of classes.

    Example:
        >>> import torch
        >>> x, y = torch.randn(40, 3), torch.arange(4).repeat(10)
        >>> bm = class_incremental_tensors((x, y), (x, y), num_experiences=2, seed=0)
        >>> bm.n_classes, len(bm.train_stream)
        (4, 2)
    """
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from avalanche.benchmarks.utils import DataAttribute
    from avalanche.benchmarks.utils.classification_dataset import ClassificationDataset
    from torch.utils.data import TensorDataset

    def wrap(x: Tensor, y: Tensor) -> Any:
        y = y.long()
        return ClassificationDataset(
            [TensorDataset(x, y)], data_attributes=[DataAttribute(y.tolist(), "targets")]
        )

    classes = sorted(set(train[1].tolist()))
    if classes != sorted(set(test[1].tolist())):
        raise ValueError("train and test must contain the same classes")
    num_classes = max(classes) + 1
    if num_experiences < 1 or num_classes % num_experiences != 0:
        raise ValueError(
            f"{num_classes} classes cannot be split into {num_experiences} equal experiences"
        )
    if class_order is None:
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
        class_order = torch.randperm(num_classes, generator=generator).tolist()
    scenario = class_incremental_benchmark(
        {"train": wrap(*train), "test": wrap(*test)},
        class_order=list(class_order),
        num_experiences=num_experiences,
    )
    scenario.n_classes = num_classes
    scenario.classes_order = list(class_order)
    return scenario


# ---------------------------------------------------------------------- checkpoints


def save_strategy_checkpoint(strategy: Any, path: str | os.PathLike[str]) -> Path:
    """Saves a strategy between experiences, atomically; resume with
    :func:`load_strategy_checkpoint`.

    The strategy is serialized by Avalanche's own ``save_checkpoint`` (dill pickle of the
    strategy, the global RNG states and the experience counter) with the optimizer excluded --
    pickling it with dill fails on torch 2.14 -- and the optimizer's ``state_dict`` is stored
    beside it in the same file, keyed by the names of the model's parameters. Objects holding
    the optimizer (e.g. an LR-scheduler plugin) must be re-created by the caller.

    Args:
        strategy: A ``BaseSGDTemplate`` strategy, outside its train/eval loops.
        path: Destination file.

    Returns:
        The path written.

    Raises:
        ValueError: If an optimized parameter is not a parameter of ``strategy.model``.
    """
    names = {id(p): n for n, p in strategy.model.named_parameters()}
    param_names = []
    for group in strategy.optimizer.param_groups:
        missing = [p for p in group["params"] if id(p) not in names]
        if missing:
            raise ValueError("the optimizer holds parameters that are not in strategy.model")
        param_names.append([names[id(p)] for p in group["params"]])
    avalanche_checkpoint = io.BytesIO()
    save_checkpoint(strategy, avalanche_checkpoint, exclude=["optimizer"])
    data = {
        "avalanche_checkpoint": avalanche_checkpoint.getvalue(),
        "optimizer_state": strategy.optimizer.state_dict(),
        "optimizer_param_names": param_names,
    }
    buffer = io.BytesIO()
    torch.save(data, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_strategy_checkpoint(
    strategy: Any,
    path: str | os.PathLike[str],
    map_location: str | torch.device | None = None,
) -> tuple[Any, int]:
    """Restores a strategy saved by :func:`save_strategy_checkpoint`, in place.

    ``strategy`` must be freshly built like the saved one (same model architecture, optimizer
    class and plugins); Avalanche's ``maybe_load_checkpoint`` replaces its state by the saved
    one (model, plugins with their replay memory and proxies, evaluator, clock, RNG states),
    keeping the fresh optimizer, which is then rebound to the restored model's parameters and
    loaded with the saved state. If ``path`` does not exist the strategy is returned unchanged
    with counter 0, as with ``maybe_load_checkpoint``.

    Args:
        strategy: The freshly built strategy.
        path: The checkpoint file.
        map_location: Device to map the saved tensors to.

    Returns:
        ``(strategy, next_experience_index)``.

    Example:
        >>> load_strategy_checkpoint(object(), "/nonexistent/ckpt.pkl")[1]
        0
    """
    if not os.path.exists(path):
        return strategy, 0
    ckp = torch.load(path, map_location=map_location, weights_only=True)
    optimizer = strategy.optimizer
    strategy, exp_counter = maybe_load_checkpoint(
        strategy, io.BytesIO(ckp["avalanche_checkpoint"]), map_location=map_location
    )
    if strategy.optimizer is not optimizer:  # the saved strategy excluded its optimizer
        raise ValueError(f"{path} holds a strategy with its optimizer; save it with this module")
    params = dict(strategy.model.named_parameters())
    groups = ckp["optimizer_param_names"]
    if len(groups) != len(optimizer.param_groups):
        raise ValueError(
            f"the checkpoint's optimizer has {len(groups)} parameter groups, the strategy's "
            f"{len(optimizer.param_groups)}"
        )
    for group, group_names in zip(optimizer.param_groups, groups, strict=True):
        group["params"] = [params[name] for name in group_names]
    optimizer.state = defaultdict(dict)
    optimizer.load_state_dict(ckp["optimizer_state"])
    return strategy, int(exp_counter)
