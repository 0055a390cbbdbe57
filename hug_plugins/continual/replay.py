"""Replay memory on Avalanche's storage policies, with the avalanche-lib 0.6.0 traps fixed.

:class:`ReplayMemoryPlugin` is Avalanche's ``ReplayPlugin`` with task labels added where a
dataset has none and the buffer updated through its ``post_adapt`` hook (see
:mod:`hug_plugins.continual`); it is the cross-entropy replay baseline and the base of
:class:`~hug_plugins.continual.HUGPlugin`.
"""

from __future__ import annotations

from typing import Any, Literal

from avalanche.benchmarks.utils.data_attribute import TaskLabels
from avalanche.training.plugins import ReplayPlugin
from avalanche.training.storage_policy import (
    ClassBalancedBuffer,
    ExemplarsBuffer,
    ExperienceBalancedBuffer,
    ReservoirSamplingBuffer,
)

__all__ = ["ReplayMemoryPlugin", "StoragePolicyName", "ensure_task_labels", "make_storage_policy"]

StoragePolicyName = Literal["class_balanced", "reservoir", "experience_balanced"]


def make_storage_policy(name: StoragePolicyName | str, mem_size: int) -> ExemplarsBuffer:
    """Builds one of Avalanche's replay storage policies.

    Args:
        name: ``"class_balanced"`` (``ClassBalancedBuffer``: the memory divided equally over
            the classes seen so far), ``"reservoir"`` (``ReservoirSamplingBuffer``: uniform
            over the stream) or ``"experience_balanced"`` (``ExperienceBalancedBuffer``).
        mem_size: Total number of stored samples, >= 0.

    Returns:
        The storage policy, with ``max_size == mem_size``.

    Raises:
        ValueError: On an unknown name or a negative size.

    Examples:
        >>> make_storage_policy("class_balanced", 200).max_size
        200
    """
    if not (isinstance(mem_size, int) and mem_size >= 0):
        raise ValueError(f"mem_size must be an int >= 0, got {mem_size!r}")
    if name == "class_balanced":
        return ClassBalancedBuffer(max_size=mem_size, adaptive_size=True)
    if name == "reservoir":
        return ReservoirSamplingBuffer(max_size=mem_size)
    if name == "experience_balanced":
        return ExperienceBalancedBuffer(max_size=mem_size, adaptive_size=True)
    raise ValueError(
        f"unknown storage policy {name!r}; use 'class_balanced', 'reservoir' or "
        "'experience_balanced' (or pass an ExemplarsBuffer)"
    )


def ensure_task_labels(dataset: Any) -> Any:
    """Returns ``dataset`` with a ``targets_task_labels`` attribute (all 0) if it has none.

    Avalanche datasets built without task labels yield ``(x, y)`` samples while every subset a
    ``ClassBalancedBuffer`` stores yields ``(x, y, t)``; the two cannot be collated into one
    replay minibatch. Giving the data a task label up front makes both ``(x, y, t)``.

    Args:
        dataset: An ``AvalancheDataset``.

    Returns:
        The same dataset if it already has task labels, else a shallow copy with them.
    """
    attributes = getattr(dataset, "_data_attributes", None)
    if attributes is None or "targets_task_labels" in attributes:
        return dataset
    return dataset.update_data_attribute("targets_task_labels", TaskLabels([0] * len(dataset)))


class _ExperienceView:
    """An experience whose ``dataset`` is replaced; everything else reads through."""

    def __init__(self, experience: Any, dataset: Any) -> None:
        self._experience = experience
        self.dataset = dataset

    def __getattr__(self, name: str) -> Any:
        return getattr(self._experience, name)


class ReplayMemoryPlugin(ReplayPlugin):  # type: ignore[misc]
    """Avalanche's ``ReplayPlugin`` with the avalanche-lib 0.6.0 traps handled.

    Same replay as ``ReplayPlugin`` (current and memory minibatches concatenated by
    ``ReplayDataLoader``), but class-balanced by default, the buffer updated through the
    storage policy's ``post_adapt`` hook (the deprecated ``update`` resets the process's warning
    filters) and task labels added to data that lacks them (see :func:`ensure_task_labels`).

    Args:
        mem_size: Total memory size, >= 0 (0 disables replay).
        storage_policy: A policy name for :func:`make_storage_policy` or an ``ExemplarsBuffer``
            with ``max_size == mem_size``.
        batch_size: Current-data minibatch size (default: the strategy's ``train_mb_size``).
        batch_size_mem: Memory minibatch size (default: the strategy's ``train_mb_size``).

    Raises:
        ValueError: On a bad size or policy.

    Examples:
        >>> plugin = ReplayMemoryPlugin(mem_size=100, storage_policy="reservoir")
        >>> type(plugin.storage_policy).__name__, len(plugin.storage_policy.buffer)
        ('ReservoirSamplingBuffer', 0)
    """

    def __init__(
        self,
        mem_size: int = 200,
        storage_policy: StoragePolicyName | str | ExemplarsBuffer = "class_balanced",
        batch_size: int | None = None,
        batch_size_mem: int | None = None,
    ) -> None:
        if isinstance(storage_policy, ExemplarsBuffer):
            policy = storage_policy
            if policy.max_size != mem_size:
                raise ValueError(
                    f"storage_policy.max_size ({policy.max_size}) must equal mem_size ({mem_size})"
                )
        else:
            policy = make_storage_policy(storage_policy, mem_size)
        for name, value in (("batch_size", batch_size), ("batch_size_mem", batch_size_mem)):
            if value is not None and not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")
        super().__init__(
            mem_size=mem_size,
            batch_size=batch_size,
            batch_size_mem=batch_size_mem,
            task_balanced_dataloader=False,
            storage_policy=policy,
        )

    def after_train_dataset_adaptation(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        """Gives the training data task labels if it has none (trap 1)."""
        if self.mem_size > 0 and strategy.adapted_dataset is not None:
            strategy.adapted_dataset = ensure_task_labels(strategy.adapted_dataset)

    def after_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        """Adds the experience's data to the memory through ``post_adapt`` (traps 1 and 2)."""
        if self.mem_size == 0:
            return
        experience = strategy.experience
        view = _ExperienceView(experience, ensure_task_labels(experience.dataset))
        self.storage_policy.post_adapt(strategy, view)
