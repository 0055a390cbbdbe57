"""The per-epoch learning-rate schedule of the training loop."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from harness.train.config import TrainerConfig

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
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
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
