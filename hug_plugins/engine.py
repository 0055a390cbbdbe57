"""The one training/evaluation loop shared by every job in ``integrations/``.

:class:`Trainer` trains any model with any loss: it calls ``loss_fn(model, batch)`` for each
batch (already moved to the device) and, every ``eval_every`` epochs and after the last one,
``eval_fn(model)`` for metrics. Supervised classification is a thin layer on top
(:class:`SupervisedLoss`, :meth:`Trainer.fit_classifier`, :func:`evaluate_classifier`): the
model returns ``(features, logits)`` and an objective from :mod:`hug_plugins.objectives` turns
them and the labels into the loss. Self-supervised jobs pass their own ``loss_fn``.

What the loop takes care of:

* **Seeding** of Python, NumPy and torch (:func:`seed_everything`); the data order of every
  epoch is derived from ``(seed, epoch)`` alone.
* **Device**: ``device="auto"`` is CUDA when available, else the CPU.
* **Mixed precision** (``amp=True``): :func:`torch.autocast` with bfloat16 on the CPU and
  float16 with a gradient scaler on CUDA (``amp_dtype`` overrides the dtype).
* **Checkpoint and resume**: with ``checkpoint_path`` set, a checkpoint (model, optimizer,
  schedule, scaler, epoch, RNG states, history) is written atomically after every epoch, and a
  run started with an existing checkpoint continues from it. A killed run re-launched with the
  same configuration ends with the same weights and metrics as an uninterrupted one (bit for
  bit on the CPU). The learning rate of an epoch is a function of that epoch and the
  configured number of epochs only, so a finished run can be continued by raising ``epochs``
  (with a decaying schedule that run differs, from the first changed epoch on, from one
  configured with the larger ``epochs`` from the start).
* **Distributed data parallel**: when :mod:`torch.distributed` is initialized (e.g. under
  ``torchrun``) the model is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`,
  each rank reads its shard through a :class:`~torch.utils.data.DistributedSampler`, only rank
  0 writes files, and reported metrics are reduced over all ranks.
* **Progress bar** (tqdm, rank 0 only) that can be switched off. The loss is accumulated on
  the device and read back once per epoch: the hot loop makes no host synchronisation.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from hug_plugins.data import make_blobs_dataset
    >>> from hug_plugins.objectives import CrossEntropyObjective
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.body, self.head = nn.Linear(4, 8), nn.Linear(8, 3)
    ...     def forward(self, x):
    ...         features = self.body(x)
    ...         return features, self.head(features)
    >>> data = make_blobs_dataset(num_classes=3, dim=4, n_per_class=20, seed=0)
    >>> seed_everything(0)
    >>> trainer = Trainer(TrainerConfig(epochs=3, batch_size=16, lr=0.1, progress=False))
    >>> result = trainer.fit_classifier(Net(), data, CrossEntropyObjective(), eval_data=data)
    >>> sorted(result.final)
    ['epoch', 'loss', 'lr', 'test_accuracy', 'test_error']
    >>> result.final["test_accuracy"] > 0.9
    True
"""

from __future__ import annotations

import math
import os
import random
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchmetrics import Metric
from tqdm.auto import tqdm

from hug_plugins.io import atomic_torch_save
from hug_plugins.objectives import Objective

__all__ = [
    "CHECKPOINT_FORMAT",
    "EpochLRSchedule",
    "EvalFn",
    "FitResult",
    "LossFn",
    "SupervisedLoss",
    "Trainer",
    "TrainerConfig",
    "distributed_info",
    "evaluate_classifier",
    "evaluate_collapse",
    "extract_features",
    "init_distributed_from_env",
    "is_main_process",
    "move_to_device",
    "resolve_device",
    "seed_everything",
    "torch_threads",
    "unwrap_model",
]

LossFn = Callable[[nn.Module, Any], Tensor]
"""``loss_fn(model, batch) -> scalar Tensor``; the batch is already on the training device."""

EvalFn = Callable[[nn.Module], Mapping[str, float]]
"""``eval_fn(model) -> {name: value}``; called with the unwrapped model in eval mode."""

EpochCallback = Callable[[int, Mapping[str, float]], None]
"""``on_epoch_end(epoch_index, history_entry)``, called on every rank after each epoch."""

CHECKPOINT_FORMAT = 1
"""Version number stored in every checkpoint."""

_OPTIMIZERS = ("sgd", "adam", "adamw")
_SCHEDULERS = ("cosine", "step", "none")
_AMP_DTYPES = ("auto", "bfloat16", "float16")


# --------------------------------------------------------------------------- configuration


def _require_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _require_float(name: str, value: object, minimum: float, *, strict: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be {relation} {minimum}, got {value}")


def _require_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def _require_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


@dataclass
class TrainerConfig:
    """Settings of :class:`Trainer`; validated on construction.

    Attributes:
        epochs: Number of training epochs (>= 1).
        batch_size: Batch size per process (>= 1).
        optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        lr: Peak learning rate (> 0).
        momentum: SGD momentum in ``[0, 1)`` (ignored by Adam/AdamW).
        weight_decay: Weight decay (>= 0), applied to all parameters.
        nesterov: Use Nesterov momentum with SGD (needs ``momentum > 0``).
        scheduler: Per-epoch learning-rate schedule: ``"cosine"`` (to ``min_lr``), ``"step"``
            (times ``gamma`` every ``step_size`` epochs) or ``"none"``.
        warmup_epochs: Epochs of linear warm-up before the schedule (>= 0, < ``epochs``).
        step_size: Epochs between decays of the ``"step"`` schedule (>= 1).
        gamma: Decay factor of the ``"step"`` schedule, in ``(0, 1]``.
        min_lr: Final learning rate of the ``"cosine"`` schedule (>= 0, <= ``lr``).
        seed: Seed for Python, NumPy, torch and the data order.
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        amp: Train under mixed precision (:func:`torch.autocast`).
        amp_dtype: ``"auto"`` (bfloat16 on CPU, float16 on CUDA), ``"bfloat16"`` or
            ``"float16"``. float16 on CUDA uses a gradient scaler.
        checkpoint_path: Where to write a checkpoint after every epoch and to resume from;
            ``None`` disables checkpointing.
        progress: Show a tqdm progress bar (rank 0 only).
        num_workers: DataLoader worker processes (>= 0).
        eval_every: Call ``eval_fn`` every this many epochs (>= 1); it also runs after the last.
        grad_clip: Clip the global gradient norm to this value (> 0); ``None`` disables.
        drop_last: Drop the last incomplete batch of each epoch.
        shuffle: Shuffle the training data each epoch.
        find_unused_parameters: Passed to DistributedDataParallel (needed if some parameters
            get no gradient in a step).
        sync_batchnorm: Convert BatchNorm layers to SyncBatchNorm under DDP.

    Example:
        >>> TrainerConfig(epochs=2, optimizer="adam", lr=1e-3).scheduler
        'cosine'
        >>> TrainerConfig(optimizer="rmsprop")
        Traceback (most recent call last):
            ...
        ValueError: optimizer must be one of ['sgd', 'adam', 'adamw'], got 'rmsprop'
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    scheduler: str = "cosine"
    warmup_epochs: int = 0
    step_size: int = 30
    gamma: float = 0.1
    min_lr: float = 0.0
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    amp_dtype: str = "auto"
    checkpoint_path: str | None = None
    progress: bool = True
    num_workers: int = 0
    eval_every: int = 1
    grad_clip: float | None = None
    drop_last: bool = False
    shuffle: bool = True
    find_unused_parameters: bool = False
    sync_batchnorm: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.checkpoint_path, os.PathLike):
            self.checkpoint_path = os.fspath(self.checkpoint_path)
        if isinstance(self.device, torch.device):
            self.device = str(self.device)
        self.validate()

    def validate(self) -> None:
        """Checks every field.

        Raises:
            ValueError: Naming the first field with a bad type or value.
        """
        _require_int("epochs", self.epochs, 1)
        _require_int("batch_size", self.batch_size, 1)
        _require_choice("optimizer", self.optimizer, _OPTIMIZERS)
        _require_float("lr", self.lr, 0.0, strict=True)
        _require_float("momentum", self.momentum, 0.0)
        if self.momentum >= 1.0:
            raise ValueError(f"momentum must be < 1, got {self.momentum}")
        _require_float("weight_decay", self.weight_decay, 0.0)
        _require_bool("nesterov", self.nesterov)
        if self.nesterov and self.optimizer == "sgd" and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        _require_choice("scheduler", self.scheduler, _SCHEDULERS)
        _require_int("warmup_epochs", self.warmup_epochs, 0)
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs must be < epochs, got {self.warmup_epochs} >= {self.epochs}"
            )
        _require_int("step_size", self.step_size, 1)
        _require_float("gamma", self.gamma, 0.0, strict=True)
        if self.gamma > 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        _require_float("min_lr", self.min_lr, 0.0)
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr must be <= lr, got {self.min_lr} > {self.lr}")
        _require_int("seed", self.seed, 0)
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"device must be a non-empty string, got {self.device!r}")
        _require_bool("amp", self.amp)
        _require_choice("amp_dtype", self.amp_dtype, _AMP_DTYPES)
        if self.checkpoint_path is not None and (
            not isinstance(self.checkpoint_path, str) or not self.checkpoint_path
        ):
            raise ValueError(
                f"checkpoint_path must be a non-empty path or None, got {self.checkpoint_path!r}"
            )
        _require_bool("progress", self.progress)
        _require_int("num_workers", self.num_workers, 0)
        _require_int("eval_every", self.eval_every, 1)
        if self.grad_clip is not None:
            _require_float("grad_clip", self.grad_clip, 0.0, strict=True)
        _require_bool("drop_last", self.drop_last)
        _require_bool("shuffle", self.shuffle)
        _require_bool("find_unused_parameters", self.find_unused_parameters)
        _require_bool("sync_batchnorm", self.sync_batchnorm)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], **overrides: Any) -> TrainerConfig:
        """Builds a config from a mapping (e.g. the ``trainer`` section of a YAML config).

        Args:
            mapping: Field names to values; OmegaConf configs work too.
            **overrides: Fields that take precedence over ``mapping``.

        Returns:
            The validated config.

        Raises:
            ValueError: For an unknown key (the message lists the valid ones) or a bad value.

        Example:
            >>> TrainerConfig.from_mapping({"epochs": 3}, seed=7).seed
            7
        """
        values = {str(k): v for k, v in dict(mapping).items()}
        values.update(overrides)
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"unknown TrainerConfig keys {unknown}; valid keys: {names}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Returns the fields as a plain dict."""
        return asdict(self)


# --------------------------------------------------------------------------- environment


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Runs the ``with`` block with ``torch.set_num_threads(num_threads)``, then restores it.

    Args:
        num_threads: Intra-op CPU threads; ``None`` leaves torch's setting alone.

    Raises:
        ValueError: If ``num_threads`` is not ``None`` and below 1.

    Example:
        >>> before = torch.get_num_threads()
        >>> with torch_threads(1):
        ...     torch.get_num_threads()
        1
        >>> torch.get_num_threads() == before
        True
    """
    if num_threads is not None and (isinstance(num_threads, bool) or int(num_threads) < 1):
        raise ValueError(f"num_threads must be >= 1 or null, got {num_threads!r}")
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def seed_everything(seed: int) -> None:
    """Seeds Python's ``random``, NumPy's global generator and torch (CPU and CUDA).

    Args:
        seed: A non-negative integer.

    Raises:
        ValueError: If ``seed`` is not a non-negative integer.

    Example:
        >>> seed_everything(3); a = torch.rand(1)
        >>> seed_everything(3); bool(torch.equal(a, torch.rand(1)))
        True
    """
    _require_int("seed", seed, 0)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def distributed_info() -> tuple[int, int]:
    """Returns ``(rank, world_size)``; ``(0, 1)`` when torch.distributed is not initialized."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Returns whether this process is rank 0 (always true without torch.distributed)."""
    return distributed_info()[0] == 0


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turns a device spec into a :class:`torch.device`.

    ``"auto"`` picks CUDA when available, else the CPU. Under torch.distributed, a bare
    ``"cuda"`` (or ``"auto"`` on a GPU machine) means the GPU ``LOCAL_RANK`` of this process.

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a :class:`torch.device`.

    Returns:
        The device.

    Raises:
        ValueError: For an unparsable spec or a CUDA device on a machine without CUDA.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(device, torch.device):
        resolved = device
    elif device == "auto":
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"invalid device {device!r}: {exc}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} requested but CUDA is not available")
        if resolved.index is None:
            local_rank = int(os.environ.get("LOCAL_RANK", "0")) if distributed_info()[1] > 1 else 0
            resolved = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return resolved


def init_distributed_from_env(backend: str | None = None) -> bool:
    """Initializes :mod:`torch.distributed` when the process was started by ``torchrun``.

    Does nothing (and returns ``False``) when ``WORLD_SIZE`` is unset or 1; returns ``True`` when
    a process group is (already) initialized. Scripts call it first thing so they run unchanged
    with ``python job.py`` and ``torchrun --nproc_per_node=N job.py``.

    Args:
        backend: ``"nccl"``, ``"gloo"``...; defaults to NCCL with CUDA, else gloo.

    Returns:
        Whether torch.distributed is initialized.

    Example:
        >>> init_distributed_from_env()  # a plain process
        False
    """
    if dist.is_available() and dist.is_initialized():
        return True
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def unwrap_model(model: nn.Module) -> nn.Module:
    """Returns the module inside a DistributedDataParallel/DataParallel wrapper, else ``model``."""
    inner = getattr(model, "module", None)
    if isinstance(model, (DistributedDataParallel, nn.DataParallel)) and isinstance(
        inner, nn.Module
    ):
        return inner
    return model


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Moves every tensor in a (nested) batch to ``device``.

    Tuples (named tuples too), lists and mappings are rebuilt; everything else is returned
    unchanged.

    Example:
        >>> move_to_device({"x": torch.ones(1), "ids": ["a"]}, torch.device("cpu"))
        {'x': tensor([1.]), 'ids': ['a']}
    """
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(move_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def _seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seeds NumPy and ``random`` from the worker's torch seed."""
    del worker_id
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed seed for the data order of ``epoch``; depends only on ``(seed, epoch)``."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0])


def _capture_rng() -> dict[str, Any]:
    state = np.random.get_state()
    if isinstance(state, dict):  # pragma: no cover - only with legacy=False
        raise RuntimeError("unexpected NumPy RNG state format")
    return {
        "python": random.getstate(),
        "numpy": (
            state[0],
            torch.from_numpy(np.array(state[1], copy=True)),
            int(state[2]),
            int(state[3]),
            float(state[4]),
        ),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _restore_rng(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda_states = list(state.get("cuda", []))
    if cuda_states and torch.cuda.is_available():
        for index in range(min(len(cuda_states), torch.cuda.device_count())):
            torch.cuda.set_rng_state(cuda_states[index], index)


# --------------------------------------------------------------------------- schedule


class EpochLRSchedule:
    """Per-epoch learning rate: optional linear warm-up, then cosine, step or constant.

    The learning rate of epoch ``e`` depends only on ``e`` and the config, never on the
    history of calls, so it is trivially consistent across a resume (even one with a larger
    ``epochs``).

    Args:
        optimizer: The optimizer; its current learning rates are the peak (base) rates.
        config: The trainer config (``scheduler``, ``epochs``, ``warmup_epochs``, ...).

    Example:
        >>> opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> sched = EpochLRSchedule(opt, TrainerConfig(epochs=4, scheduler="cosine"))
        >>> [round(sched.factor(e), 3) for e in range(4)]
        [1.0, 0.854, 0.5, 0.146]
    """

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainerConfig) -> None:
        self.optimizer = optimizer
        self.config = config
        self.base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
        self.last_epoch = -1

    def factor(self, epoch: int) -> float:
        """Returns the multiplier of the base learning rate in ``epoch`` (0-based)."""
        cfg = self.config
        if epoch < cfg.warmup_epochs:
            return (epoch + 1) / (cfg.warmup_epochs + 1)
        if cfg.scheduler == "cosine":
            t = (epoch - cfg.warmup_epochs) / max(1, cfg.epochs - cfg.warmup_epochs)
            floor = cfg.min_lr / cfg.lr
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
        if cfg.scheduler == "step":
            return float(cfg.gamma ** ((epoch - cfg.warmup_epochs) // cfg.step_size))
        return 1.0

    def set_epoch(self, epoch: int) -> None:
        """Sets the learning rate of every parameter group for ``epoch``."""
        scale = self.factor(epoch)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * scale
        self.last_epoch = epoch

    def state_dict(self) -> dict[str, Any]:
        """Returns the schedule's state (name, last epoch, base rates)."""
        return {
            "scheduler": self.config.scheduler,
            "last_epoch": self.last_epoch,
            "base_lrs": list(self.base_lrs),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores the last epoch; the rates themselves follow the current config."""
        self.last_epoch = int(state["last_epoch"])


# --------------------------------------------------------------------------- metrics


class _AccuracyCounts(Metric):
    """Sums of correct predictions and samples; reduced over all ranks under DDP."""

    full_state_update = False
    correct: Tensor
    total: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        self.correct += (preds == target).sum()
        self.total += target.numel()

    def compute(self) -> Tensor:
        return torch.stack([self.correct, self.total])


def _split_batch(batch: Any) -> tuple[Any, Tensor]:
    if isinstance(batch, (list, tuple)) and len(batch) >= 2 and isinstance(batch[1], Tensor):
        return batch[0], batch[1]
    raise ValueError(
        "a classification batch must be a (inputs, labels, ...) tuple or list with a label "
        f"tensor second, got {type(batch).__name__}"
    )


def _features_and_logits(output: Any) -> tuple[Tensor, Tensor]:
    if isinstance(output, Tensor):
        return output, output
    if (
        isinstance(output, (list, tuple))
        and len(output) == 2
        and all(isinstance(t, Tensor) for t in output)
    ):
        return output[0], output[1]
    raise ValueError(
        "a classification model must return logits or a (features, logits) pair, got "
        f"{type(output).__name__}"
    )


def _model_device(model: nn.Module) -> torch.device:
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def _local_shard(data: Dataset[Any]) -> Dataset[Any]:
    """This rank's disjoint, unpadded share of ``data`` (all of it without DDP)."""
    rank, world = distributed_info()
    if world == 1:
        return data
    return Subset(data, range(rank, len(data), world))  # type: ignore[arg-type]


def _eval_loader(
    data: Dataset[Any] | DataLoader[Any], batch_size: int, num_workers: int, shard: bool
) -> DataLoader[Any]:
    if isinstance(data, DataLoader):
        return data
    if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
        raise ValueError(f"data must be a Dataset or DataLoader, got {type(data).__name__}")
    _require_int("batch_size", batch_size, 1)
    _require_int("num_workers", num_workers, 0)
    return DataLoader(
        _local_shard(data) if shard else data,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
    )


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    data: Dataset[Any] | DataLoader[Any],
    *,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    prefix: str = "",
) -> dict[str, float]:
    """Top-1 accuracy and error of a classifier on a dataset.

    The model returns logits or ``(features, logits)``; the prediction is the arg-max of the
    logits. Counting uses a :mod:`torchmetrics` metric, so under DDP every rank gets the same
    global numbers. Given a Dataset under DDP, each rank evaluates a disjoint share of it (every
    sample exactly once); a DataLoader is used as is on every rank. The model's train/eval mode
    is restored afterwards.

    Args:
        model: The classifier (a DDP wrapper is unwrapped).
        data: A dataset or loader yielding ``(inputs, labels, ...)``.
        batch_size: Batch size when ``data`` is a dataset.
        device: Where to evaluate; defaults to the model's device.
        num_workers: DataLoader workers when ``data`` is a dataset.
        prefix: Prepended to the metric names, e.g. ``"test_"``.

    Returns:
        ``{prefix + "accuracy": a, prefix + "error": 1 - a}``.

    Raises:
        ValueError: On an empty dataset or a malformed batch/model output.

    Example:
        >>> from hug_plugins.data import make_blobs_dataset
        >>> data = make_blobs_dataset(num_classes=2, dim=2, n_per_class=4, seed=0)
        >>> model = nn.Linear(2, 2)
        >>> sorted(evaluate_classifier(model, data, prefix="val_"))
        ['val_accuracy', 'val_error']
    """
    model = unwrap_model(model)
    target_device = _model_device(model) if device is None else resolve_device(device)
    loader = _eval_loader(data, batch_size, num_workers, shard=True)
    counts = _AccuracyCounts().to(target_device)
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            inputs, labels = _split_batch(batch)
            _, logits = _features_and_logits(model(move_to_device(inputs, target_device)))
            if logits.ndim != 2:
                raise ValueError(f"logits must have shape (N, C), got {tuple(logits.shape)}")
            counts.update(logits.argmax(dim=1), labels.to(target_device))
        with warnings.catch_warnings():
            # A rank whose share is empty never calls update(); the global sync still works.
            warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
            correct, total = counts.compute().tolist()
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluate_classifier() got an empty dataset")
    accuracy = correct / total
    return {f"{prefix}accuracy": accuracy, f"{prefix}error": 1.0 - accuracy}


@torch.no_grad()
def extract_features(
    model: nn.Module,
    data: Dataset[Any] | DataLoader[Any],
    *,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    num_workers: int = 0,
) -> tuple[Tensor, Tensor]:
    """Runs a ``(features, logits)`` model over a dataset and returns its features and labels.

    Runs locally (no sharding under DDP), in eval mode, in data order; the model's mode is
    restored afterwards. The result lives on the CPU, in float32.

    Args:
        model: Returns ``(features, logits)`` (a bare tensor is taken as the features).
        data: A dataset or loader yielding ``(inputs, labels, ...)``.
        batch_size: Batch size when ``data`` is a dataset.
        device: Where to run; defaults to the model's device.
        num_workers: DataLoader workers when ``data`` is a dataset.

    Returns:
        ``(features (N, d) float32, labels (N,))``.

    Raises:
        ValueError: On an empty dataset or a malformed batch/model output.

    Example:
        >>> from hug_plugins.data import make_blobs_dataset
        >>> data = make_blobs_dataset(num_classes=2, dim=3, n_per_class=4, seed=0)
        >>> feats, labels = extract_features(nn.Linear(3, 5), data)
        >>> tuple(feats.shape), tuple(labels.shape)
        ((8, 5), (8,))
    """
    model = unwrap_model(model)
    target_device = _model_device(model) if device is None else resolve_device(device)
    loader = _eval_loader(data, batch_size, num_workers, shard=False)
    feats: list[Tensor] = []
    labels: list[Tensor] = []
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            inputs, target = _split_batch(batch)
            features, _ = _features_and_logits(model(move_to_device(inputs, target_device)))
            feats.append(features.detach().float().cpu())
            labels.append(target.cpu())
    finally:
        model.train(was_training)
    if not feats:
        raise ValueError("extract_features() got an empty dataset")
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def evaluate_collapse(
    model: nn.Module,
    data: Dataset[Any] | DataLoader[Any],
    num_classes: int,
    *,
    classifier_weight: Tensor | None = None,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    prefix: str = "",
    spaces: Sequence[str] = ("raw",),
) -> dict[str, float]:
    """Neural-collapse metrics (NC1-NC4, GNC2) of a ``(features, logits)`` model on a dataset.

    Two streaming passes with :class:`hug_plugins.metrics.NeuralCollapseMetrics` (NC1, NC2,
    GNC2, NC3) and :class:`hug_plugins.metrics.NCMAgreement` (NC4: how often the arg-max of the
    logits differs from the nearest-class-mean decision). Under DDP a dataset is sharded and
    the statistics are reduced over ranks, so every rank gets the same numbers.

    Args:
        model: Returns ``(features, logits)``.
        data: A dataset or loader yielding ``(inputs, labels, ...)`` (usually the train set).
        num_classes: Number of classes ``C``.
        classifier_weight: ``(C, d)`` classifier rows or proxies for NC2-w and NC3; without it
            those metrics are left out.
        batch_size: Batch size when ``data`` is a dataset.
        device: Where to run; defaults to the model's device.
        num_workers: DataLoader workers when ``data`` is a dataset.
        prefix: Prepended to the metric names.
        spaces: Which features to measure, from the same forward passes: ``"raw"`` (the
            neural-collapse literature's convention for linear heads; keys ``<prefix><name>``)
            and/or ``"unit"``, the L2-normalized features ``x / ||x||`` (the space a cosine or
            proxy head such as HUG's decides in, where the feature norm is irrelevant to NC1
            and to the nearest-class-mean rule of NC4; keys ``<prefix>unit_<name>``).

    Returns:
        Every metric of :class:`~hug_plugins.metrics.NeuralCollapseMetrics` (``nc1``,
        ``gnc2_energy``, ``gnc2_ratio``, ``nc3_dist``, ...) and of
        :class:`~hug_plugins.metrics.NCMAgreement` (``nc4_mismatch``, ...), as floats.

    Raises:
        ValueError: On an empty dataset, fewer than 2 classes present, or malformed outputs.

    Example:
        >>> from hug_plugins.data import make_blobs_dataset
        >>> data = make_blobs_dataset(num_classes=3, dim=4, n_per_class=10, seed=0)
        >>> class Net(nn.Module):
        ...     def forward(self, x):
        ...         return x, x[:, :3]
        >>> out = evaluate_collapse(Net(), data, num_classes=3)
        >>> "nc1" in out and 0.0 <= out["nc4_mismatch"] <= 1.0
        True
    """
    from hug_plugins.metrics import NCMAgreement, NeuralCollapseMetrics

    chosen = list(dict.fromkeys(spaces))
    if not chosen or any(space not in ("raw", "unit") for space in chosen):
        raise ValueError(f"spaces must be a non-empty subset of ('raw', 'unit'), got {spaces}")
    model = unwrap_model(model)
    target_device = _model_device(model) if device is None else resolve_device(device)
    loader = _eval_loader(data, batch_size, num_workers, shard=True)
    weight = None if classifier_weight is None else classifier_weight.detach()
    was_training = model.training
    model.eval()
    collapse: dict[str, NeuralCollapseMetrics] = {}
    try:
        for batch in loader:
            inputs, labels = _split_batch(batch)
            features, _ = _features_and_logits(model(move_to_device(inputs, target_device)))
            labels = labels.to(target_device)
            for space in chosen:
                view = _collapse_space(features, space)
                if space not in collapse:
                    metric = NeuralCollapseMetrics(num_classes=num_classes, dim=view.shape[1])
                    collapse[space] = metric.to(target_device)
                    collapse[space].update(view, labels, weight)
                else:
                    collapse[space].update(view, labels)
        if not collapse:
            raise ValueError("evaluate_collapse() got an empty dataset")
        results = {s: {k: float(v) for k, v in m.compute().items()} for s, m in collapse.items()}
        agreement: dict[str, NCMAgreement] = {}
        for space, metric in collapse.items():
            with metric.sync_context():
                means, present = metric.class_means()
            agreement[space] = NCMAgreement(means, present).to(target_device)
        for batch in loader:
            inputs, labels = _split_batch(batch)
            features, logits = _features_and_logits(model(move_to_device(inputs, target_device)))
            labels, predictions = labels.to(target_device), logits.argmax(dim=1)
            for space in chosen:
                agreement[space].update(_collapse_space(features, space), labels, predictions)
        for space in chosen:
            results[space].update({k: float(v) for k, v in agreement[space].compute().items()})
    finally:
        model.train(was_training)
    return {
        f"{prefix}{'' if space == 'raw' else 'unit_'}{k}": v
        for space in chosen
        for k, v in results[space].items()
    }


def _collapse_space(features: Tensor, space: str) -> Tensor:
    """The features the collapse metrics see: raw, or L2-normalized rows (float32)."""
    features = features.float()
    if space == "unit":
        return torch.nn.functional.normalize(features, dim=1, eps=1e-12)
    return features


# --------------------------------------------------------------------------- losses


class SupervisedLoss(nn.Module):
    """Adapts an objective ``objective(features, logits, labels)`` to ``loss_fn(model, batch)``.

    The batch is ``(inputs, labels, ...)``; the model returns ``(features, logits)`` (a model
    returning only logits passes them as both, fine for objectives that ignore the features).

    Args:
        objective: E.g. :class:`hug_plugins.objectives.CrossEntropyObjective` or
            :class:`hug_plugins.objectives.HUGObjective`; if it is a module, its parameters
            (e.g. proxies outside the model) are trained too.

    Example:
        >>> from hug_plugins.objectives import CrossEntropyObjective
        >>> loss_fn = SupervisedLoss(CrossEntropyObjective())
        >>> loss_fn(nn.Linear(2, 3), (torch.randn(4, 2), torch.tensor([0, 1, 2, 0]))).ndim
        0
    """

    objective: Objective

    def __init__(self, objective: Objective) -> None:
        super().__init__()
        if not callable(objective):
            raise ValueError(f"objective must be callable, got {type(objective).__name__}")
        self.objective = objective

    def forward(self, model: nn.Module, batch: Any) -> Tensor:
        """Returns ``objective(*model(inputs), labels)`` for a batch ``(inputs, labels, ...)``."""
        inputs, labels = _split_batch(batch)
        features, logits = _features_and_logits(model(inputs))
        return self.objective(features, logits, labels)


class AugmentedLoss(nn.Module):
    """``loss_fn(model, batch)`` for the trainer: augments the batch inputs, then the objective.

    The augmentation runs inside the loss, on the training device, drawing from the global
    RNG that the trainer seeds and checkpoints.

    Args:
        objective: ``objective(features, logits, labels)``.
        augment: Batch augmentation (e.g. :class:`~hug_plugins.datasets.BatchAugment`).
    """

    def __init__(self, objective: Objective, augment: nn.Module) -> None:
        super().__init__()
        self.supervised = SupervisedLoss(objective)
        self.augment = augment

    def forward(self, model: nn.Module, batch: Any) -> Tensor:
        """Returns the objective on the augmented ``(inputs, labels)`` batch."""
        loss: Tensor = self.supervised(model, (self.augment(batch[0]), batch[1], *batch[2:]))
        return loss


# --------------------------------------------------------------------------- trainer


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` returns.

    Attributes:
        history: One entry per completed epoch (including epochs restored from a checkpoint):
            ``epoch`` (1-based), ``loss`` (mean training loss over all ranks), ``lr`` and, in
            evaluated epochs, the metrics of ``eval_fn``.
        start_epoch: Epochs already completed (from a checkpoint) when ``fit`` was called.
        epochs: The configured number of epochs.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    start_epoch: int = 0
    epochs: int = 0

    @property
    def final(self) -> dict[str, float]:
        """The last history entry (it includes the metrics of the final evaluation)."""
        return dict(self.history[-1]) if self.history else {}

    @property
    def resumed(self) -> bool:
        """Whether training continued from a checkpoint."""
        return self.start_epoch > 0


class Trainer:
    """Trains a model with a loss function; see the module docstring for what it handles.

    Args:
        config: The settings; a mapping is converted with :meth:`TrainerConfig.from_mapping`.

    Attributes:
        config: The validated settings.
        device: The device training runs on.
        optimizer: The optimizer of the last :meth:`fit` call (``None`` before).

    Example:
        >>> trainer = Trainer(TrainerConfig(epochs=1, device="cpu", progress=False))
        >>> trainer.device
        device(type='cpu')
    """

    def __init__(self, config: TrainerConfig | Mapping[str, Any] | None = None) -> None:
        if config is None:
            config = TrainerConfig()
        elif not isinstance(config, TrainerConfig):
            config = TrainerConfig.from_mapping(config)
        config.validate()
        self.config = config
        self.device = resolve_device(config.device)
        self.optimizer: torch.optim.Optimizer | None = None

    # -- building blocks ------------------------------------------------------------------

    def _amp_dtype(self) -> torch.dtype:
        name = self.config.amp_dtype
        if name == "auto":
            return torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.float16 if name == "float16" else torch.bfloat16

    def _build_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        cfg = self.config
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(
                params,
                lr=cfg.lr,
                momentum=cfg.momentum,
                weight_decay=cfg.weight_decay,
                nesterov=cfg.nesterov and cfg.momentum > 0,
            )
        if cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def _build_loader(
        self,
        data: Dataset[Any] | DataLoader[Any],
        collate_fn: Callable[[list[Any]], Any] | None,
    ) -> tuple[DataLoader[Any], torch.Generator | None]:
        cfg = self.config
        rank, world = distributed_info()
        if isinstance(data, DataLoader):
            if world > 1 and not isinstance(_loader_sampler(data), DistributedSampler):
                raise ValueError(
                    "under torch.distributed a DataLoader passed to fit() must use a "
                    "DistributedSampler; pass the Dataset instead and the trainer builds one"
                )
            return data, None
        if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
            raise ValueError(
                f"train_data must be a Dataset or DataLoader, got {type(data).__name__}"
            )
        if len(data) == 0:
            raise ValueError("train_data is empty")
        generator = torch.Generator()
        generator.manual_seed(cfg.seed)
        sampler: DistributedSampler[Any] | None = None
        if world > 1:
            sampler = DistributedSampler(
                data,
                num_replicas=world,
                rank=rank,
                shuffle=cfg.shuffle,
                seed=cfg.seed,
                drop_last=cfg.drop_last,
            )
        loader: DataLoader[Any] = DataLoader(
            data,
            batch_size=cfg.batch_size,
            shuffle=cfg.shuffle if sampler is None else False,
            sampler=sampler,
            num_workers=cfg.num_workers,
            collate_fn=collate_fn,
            pin_memory=self.device.type == "cuda",
            drop_last=cfg.drop_last,
            generator=generator,
            worker_init_fn=_seed_worker if cfg.num_workers > 0 else None,
        )
        return loader, generator

    def _checkpoint_state(
        self,
        model: nn.Module,
        loss_module: nn.Module | None,
        optimizer: torch.optim.Optimizer,
        schedule: EpochLRSchedule,
        scaler: torch.amp.GradScaler,
        epoch: int,
        history: list[dict[str, float]],
    ) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "model": model.state_dict(),
            "loss_fn": loss_module.state_dict() if loss_module is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": _capture_rng(),
            "history": [dict(entry) for entry in history],
            "config": self.config.to_dict(),
        }

    # -- public API -----------------------------------------------------------------------

    def fit(
        self,
        model: nn.Module,
        train_data: Dataset[Any] | DataLoader[Any],
        loss_fn: LossFn,
        eval_fn: EvalFn | None = None,
        *,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        on_epoch_end: EpochCallback | None = None,
    ) -> FitResult:
        """Trains ``model`` for ``config.epochs`` epochs (resuming from a checkpoint if any).

        Seeds everything with ``config.seed`` first; build the model after
        :func:`seed_everything` for reproducible initial weights. All trainable parameters
        should live in ``model``; trainable parameters of a ``loss_fn`` that is an
        :class:`~torch.nn.Module` are trained too (their gradients are averaged over ranks).

        Args:
            model: The model; moved to the trainer's device (in place).
            train_data: A Dataset (the trainer builds a seeded, shuffling, DDP-aware loader) or
                a DataLoader (used as is; under DDP it must use a DistributedSampler).
            loss_fn: ``loss_fn(model, batch) -> scalar Tensor``; receives the (DDP-wrapped)
                model and the batch moved to the device.
            eval_fn: ``eval_fn(model) -> {name: float}``, called with the unwrapped model in
                eval mode every ``eval_every`` epochs and after the last epoch, on every rank.
            collate_fn: Passed to the DataLoader built from a Dataset.
            on_epoch_end: Called as ``on_epoch_end(epoch_index, history_entry)`` on every rank.

        Returns:
            A :class:`FitResult` with the per-epoch history.

        Raises:
            ValueError: On bad data, a non-scalar loss, or a checkpoint that does not fit.
            FloatingPointError: If the epoch's mean training loss is not finite.
        """
        cfg = self.config
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise ValueError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        if eval_fn is not None and not callable(eval_fn):
            raise ValueError(f"eval_fn must be callable or None, got {type(eval_fn).__name__}")
        rank, world = distributed_info()
        distributed = world > 1
        device = self.device
        loader, generator = self._build_loader(train_data, collate_fn)
        seed_everything(cfg.seed)

        model.to(device)
        loss_module = loss_fn if isinstance(loss_fn, nn.Module) else None
        if loss_module is not None:
            loss_module.to(device)
        model_param_ids = {id(p) for p in model.parameters()}
        params = [p for p in model.parameters() if p.requires_grad]
        extra: list[nn.Parameter] = []
        if loss_module is not None:
            extra = [
                p
                for p in loss_module.parameters()
                if p.requires_grad and id(p) not in model_param_ids
            ]
        if not params and not extra:
            raise ValueError("model (and loss_fn) have no trainable parameters")
        optimizer = self._build_optimizer(params + extra)
        schedule = EpochLRSchedule(optimizer, cfg)
        amp_dtype = self._amp_dtype()
        use_scaler = cfg.amp and amp_dtype == torch.float16 and device.type == "cuda"
        scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        self.optimizer = optimizer

        history: list[dict[str, float]] = []
        start_epoch = 0
        ckpt_path = Path(cfg.checkpoint_path) if cfg.checkpoint_path else None
        if ckpt_path is not None and ckpt_path.is_file():
            state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(f"{str(ckpt_path)!r} is not a hug_plugins trainer checkpoint")
            try:
                model.load_state_dict(state["model"])
                if loss_module is not None and state.get("loss_fn") is not None:
                    loss_module.load_state_dict(state["loss_fn"])
                optimizer.load_state_dict(state["optimizer"])
            except (RuntimeError, ValueError, KeyError) as exc:
                raise ValueError(
                    f"checkpoint {str(ckpt_path)!r} does not match this model/optimizer: {exc}"
                ) from None
            schedule.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            start_epoch = int(state["epoch"])
            history = [dict(entry) for entry in state["history"]]
            _restore_rng(state["rng"])

        if distributed and cfg.sync_batchnorm:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[no-untyped-call]
        train_model: nn.Module = model
        if distributed:
            train_model = DistributedDataParallel(
                model,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=cfg.find_unused_parameters,
            )
            for p in extra:  # keep parameters outside the model identical on all ranks
                dist.broadcast(p.data, src=0)

        all_params = params + extra
        show = cfg.progress and rank == 0
        epoch_bar = tqdm(
            total=cfg.epochs,
            initial=min(start_epoch, cfg.epochs),
            desc="train",
            unit="epoch",
            disable=not show,
            dynamic_ncols=True,
        )
        try:
            for epoch in range(start_epoch, cfg.epochs):
                if generator is not None:
                    generator.manual_seed(_epoch_seed(cfg.seed, epoch))
                sampler = _loader_sampler(loader)
                if isinstance(sampler, DistributedSampler):
                    sampler.set_epoch(epoch)
                schedule.set_epoch(epoch)
                train_model.train()
                loss_sum = torch.zeros((), device=device, dtype=torch.float32)
                n_batches = 0
                batch_bar = tqdm(
                    loader,
                    desc=f"epoch {epoch + 1}/{cfg.epochs}",
                    leave=False,
                    disable=not show,
                    dynamic_ncols=True,
                )
                for batch in batch_bar:
                    batch = move_to_device(batch, device)
                    optimizer.zero_grad(set_to_none=True)
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=cfg.amp):
                        loss = loss_fn(train_model, batch)
                    if not isinstance(loss, Tensor) or loss.numel() != 1:
                        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss)
                        raise ValueError(f"loss_fn must return a scalar tensor, got {shape}")
                    scaled: Tensor = scaler.scale(loss.reshape(()))
                    scaled.backward()  # type: ignore[no-untyped-call]
                    if distributed:
                        for p in extra:
                            if p.grad is not None:
                                dist.all_reduce(p.grad)
                                p.grad.div_(world)
                    if cfg.grad_clip is not None:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(all_params, cfg.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    loss_sum += loss.detach().float().reshape(())
                    n_batches += 1
                batch_bar.close()
                if n_batches == 0:
                    raise ValueError(
                        "the training loader produced no batches (is the dataset smaller than "
                        "batch_size with drop_last=True?)"
                    )
                totals = torch.stack([loss_sum, torch.tensor(float(n_batches), device=device)])
                if distributed:
                    dist.all_reduce(totals)
                mean_loss = float((totals[0] / totals[1]).item())
                if not math.isfinite(mean_loss):
                    raise FloatingPointError(
                        f"training loss is {mean_loss} in epoch {epoch + 1}; lower the learning "
                        "rate, enable grad_clip, or check the loss inputs"
                    )
                entry: dict[str, float] = {
                    "epoch": epoch + 1,
                    "loss": mean_loss,
                    "lr": float(optimizer.param_groups[0]["lr"]),
                }
                is_last = epoch + 1 == cfg.epochs
                if eval_fn is not None and ((epoch + 1) % cfg.eval_every == 0 or is_last):
                    inner = unwrap_model(train_model)
                    was_training = inner.training
                    inner.eval()
                    try:
                        metrics = eval_fn(inner)
                    finally:
                        inner.train(was_training)
                    clash = sorted(set(metrics) & set(entry))
                    if clash:
                        raise ValueError(f"eval_fn returned reserved metric names {clash}")
                    entry.update({str(k): float(v) for k, v in metrics.items()})
                history.append(entry)
                if ckpt_path is not None:
                    if rank == 0:
                        atomic_torch_save(
                            self._checkpoint_state(
                                unwrap_model(train_model),
                                loss_module,
                                optimizer,
                                schedule,
                                scaler,
                                epoch + 1,
                                history,
                            ),
                            ckpt_path,
                        )
                    if distributed:
                        dist.barrier()
                if on_epoch_end is not None:
                    on_epoch_end(epoch, entry)
                epoch_bar.set_postfix(
                    {k: f"{v:.4g}" for k, v in entry.items() if k != "epoch"}, refresh=False
                )
                epoch_bar.update(1)
        finally:
            epoch_bar.close()
        return FitResult(history=history, start_epoch=start_epoch, epochs=cfg.epochs)

    def fit_classifier(
        self,
        model: nn.Module,
        train_data: Dataset[Any] | DataLoader[Any],
        objective: Objective,
        eval_data: Dataset[Any] | DataLoader[Any] | None = None,
        *,
        eval_prefix: str = "test_",
        eval_batch_size: int = 512,
        on_epoch_end: EpochCallback | None = None,
    ) -> FitResult:
        """Supervised classification: ``objective(*model(x), y)`` with accuracy evaluation.

        Args:
            model: Returns ``(features, logits)`` for a batch of inputs.
            train_data: Yields ``(inputs, labels)``; see :meth:`fit`.
            objective: ``objective(features, logits, labels) -> scalar Tensor``.
            eval_data: If given, :func:`evaluate_classifier` runs on it (as ``eval_fn``).
            eval_prefix: Prefix of the evaluation metric names.
            eval_batch_size: Batch size of the evaluation.
            on_epoch_end: See :meth:`fit`.

        Returns:
            The :class:`FitResult`; with ``eval_data`` its entries carry
            ``<prefix>accuracy`` and ``<prefix>error``.
        """
        eval_fn: EvalFn | None = None
        if eval_data is not None:
            data = eval_data
            device = self.device

            def eval_fn(inner: nn.Module) -> dict[str, float]:
                return evaluate_classifier(
                    inner,
                    data,
                    batch_size=eval_batch_size,
                    device=device,
                    num_workers=self.config.num_workers,
                    prefix=eval_prefix,
                )

        return self.fit(
            model, train_data, SupervisedLoss(objective), eval_fn, on_epoch_end=on_epoch_end
        )


def _loader_sampler(loader: DataLoader[Any]) -> Any:
    """The index sampler of a loader (the one inside its batch sampler, if any)."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    inner = getattr(batch_sampler, "sampler", None)
    return inner if inner is not None else loader.sampler
