"""Configuration of the training loop: :class:`TrainerConfig`, validated once where it enters."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("cosine", "step", "none")
AMP_DTYPES = ("auto", "bfloat16", "float16")


# --------------------------------------------------------------------------- configuration


def require_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def require_float(name: str, value: object, minimum: float, *, strict: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be {relation} {minimum}, got {value}")


def require_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def require_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


@dataclass(frozen=True)
class TrainerConfig:
    """Settings of :class:`Trainer`; validated once, on construction, and immutable after
    (derive a run's config with :func:`dataclasses.replace` or :meth:`from_mapping`).

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
            object.__setattr__(self, "checkpoint_path", os.fspath(self.checkpoint_path))
        if isinstance(self.device, torch.device):
            object.__setattr__(self, "device", str(self.device))
        self.validate()

    def validate(self) -> None:
        """Checks every field.

        Raises:
            ValueError: Naming the first field with a bad type or value.
        """
        require_int("epochs", self.epochs, 1)
        require_int("batch_size", self.batch_size, 1)
        require_choice("optimizer", self.optimizer, OPTIMIZERS)
        require_float("lr", self.lr, 0.0, strict=True)
        require_float("momentum", self.momentum, 0.0)
        if self.momentum >= 1.0:
            raise ValueError(f"momentum must be < 1, got {self.momentum}")
        require_float("weight_decay", self.weight_decay, 0.0)
        require_bool("nesterov", self.nesterov)
        if self.nesterov and self.optimizer == "sgd" and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        require_choice("scheduler", self.scheduler, SCHEDULERS)
        require_int("warmup_epochs", self.warmup_epochs, 0)
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs must be < epochs, got {self.warmup_epochs} >= {self.epochs}"
            )
        require_int("step_size", self.step_size, 1)
        require_float("gamma", self.gamma, 0.0, strict=True)
        if self.gamma > 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        require_float("min_lr", self.min_lr, 0.0)
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr must be <= lr, got {self.min_lr} > {self.lr}")
        require_int("seed", self.seed, 0)
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"device must be a non-empty string, got {self.device!r}")
        require_bool("amp", self.amp)
        require_choice("amp_dtype", self.amp_dtype, AMP_DTYPES)
        if self.checkpoint_path is not None and (
            not isinstance(self.checkpoint_path, str) or not self.checkpoint_path
        ):
            raise ValueError(
                f"checkpoint_path must be a non-empty path or None, got {self.checkpoint_path!r}"
            )
        require_bool("progress", self.progress)
        require_int("num_workers", self.num_workers, 0)
        require_int("eval_every", self.eval_every, 1)
        if self.grad_clip is not None:
            require_float("grad_clip", self.grad_clip, 0.0, strict=True)
        require_bool("drop_last", self.drop_last)
        require_bool("shuffle", self.shuffle)
        require_bool("find_unused_parameters", self.find_unused_parameters)
        require_bool("sync_batchnorm", self.sync_batchnorm)

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
