"""The training loader of a :class:`~harness.train.Trainer` run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from harness.train.config import TrainerConfig
from harness.train.runtime import distributed_info, seed_worker

__all__ = ["build_train_loader", "loader_sampler"]


def build_train_loader(
    data: Dataset[Any] | DataLoader[Any],
    cfg: TrainerConfig,
    *,
    pin_memory: bool = False,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> tuple[DataLoader[Any], torch.Generator | None]:
    """The training loader of a run, and the generator of its shuffling (``None``: given loader).

    A dataset gets a loader with the config's batch size, shuffling seeded by ``cfg.seed``
    (checkpointed by the trainer), a ``DistributedSampler`` under torch.distributed and seeded
    workers. A given ``DataLoader`` is used as is; under torch.distributed it must already use
    a ``DistributedSampler``.

    Raises:
        ValueError: For an empty or non-indexable dataset, or a loader without a
            ``DistributedSampler`` under torch.distributed.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.zeros(10, 2))
        >>> loader, gen = build_train_loader(data, TrainerConfig(batch_size=4))
        >>> len(loader), gen is not None
        (3, True)
    """
    rank, world = distributed_info()
    if isinstance(data, DataLoader):
        if world > 1 and not isinstance(loader_sampler(data), DistributedSampler):
            raise ValueError(
                "under torch.distributed a DataLoader passed to fit() must use a "
                "DistributedSampler; pass the Dataset instead and the trainer builds one"
            )
        return data, None
    if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
        raise ValueError(f"train_data must be a Dataset or DataLoader, got {type(data).__name__}")
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
        pin_memory=pin_memory,
        drop_last=cfg.drop_last,
        generator=generator,
        worker_init_fn=seed_worker if cfg.num_workers > 0 else None,
    )
    return loader, generator


def loader_sampler(loader: DataLoader[Any]) -> Any:
    """The index sampler of a loader (the one inside its batch sampler, if any)."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    inner = getattr(batch_sampler, "sampler", None)
    return inner if inner is not None else loader.sampler
