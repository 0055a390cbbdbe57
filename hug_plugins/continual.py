"""Avalanche adapter: train any ``SupervisedTemplate`` strategy with the HUG loss and replay.

:class:`HUGPlugin` is an Avalanche ``SupervisedPlugin`` (a subclass of Avalanche's
``ReplayPlugin``) that

* owns a :class:`~hug_plugins.proxies.ProxyHead` with one proxy per class of the *whole* stream
  (``num_classes`` is fixed up front, e.g. ``benchmark.n_classes``). The proxies are either
  static optimized (an energy-minimized configuration of all ``C`` classes, frozen) or learnable
  (initialized from that configuration and kept apart by HUG's inter-class term over all ``C``
  proxies), so the proxies of classes that arrive later never collide with earlier ones;
* replaces the strategy's criterion, for as long as a ``train``/``eval`` call runs, by
  ``hug_weight * HUG(features, y, proxies) + ce_weight * criterion(mb_output, y)``
  (``ce_weight = 0``: HUG instead of cross-entropy; ``> 0``: in addition);
* keeps a replay memory on Avalanche's storage policies (class-balanced by default, reservoir
  sampling or experience-balanced), whose samples join every minibatch through Avalanche's
  ``ReplayDataLoader``; HUG's intra-class term therefore pulls current and replayed samples
  alike to their proxies.

**What the model must expose.** The plugin's ``head`` must be the model's classification layer:
the features are the head's *input*, captured (without detaching) by a forward pre-hook, and the
model's output is the head's scaled-cosine logits ``scale * cos(x, w_c)``, so ``mb_output``
predicts the nearest proxy and Avalanche's accuracy and forgetting metrics work unchanged. Build
the model as ``nn.Sequential(backbone, plugin.head)`` or replace an existing classifier with
:meth:`HUGPlugin.attach` (``plugin.attach(model, "classifier")``). The backbone must return
``(B, feature_dim)`` features. Create the optimizer *after* attaching the head, so learnable
proxies are optimized.

**Traps of avalanche-lib 0.6.0 handled here** (also by :class:`ReplayMemoryPlugin`, usable as the
cross-entropy replay baseline):

* datasets without a ``targets_task_labels`` attribute make ``ClassBalancedBuffer`` crash on the
  second experience (its subsets gain task labels, so memory samples are ``(x, y, t)`` while the
  current ones are ``(x, y)`` and the merged batch cannot be collated): task labels (all 0) are
  added to the training data and to the data given to the buffer when missing;
* ``ReplayPlugin`` calls the deprecated ``ExemplarsBuffer.update``, whose deprecation wrapper runs
  ``warnings.simplefilter("once", DeprecationWarning)`` and so overrides the process's warning
  filters; the buffer is updated through its ``post_adapt`` hook instead;
* ``avalanche.checkpointing.save_checkpoint`` fails with dill on torch 2.14 (``Can't pickle
  sentinel``) because of the optimizer: :func:`save_strategy_checkpoint` excludes it and stores
  its ``state_dict``; :func:`load_strategy_checkpoint` rebinds the optimizer to the restored
  model and loads that state, so training resumes in the middle of a stream.

Reference:
    Liu, Yu, Weller, Schölkopf. "Generalizing and Decoupling Neural Collapse via Hyperspherical
    Uniformity Gap." ICLR 2023. https://arxiv.org/abs/2303.06484

Example:
    >>> import torch
    >>> from torch import nn
    >>> plugin = HUGPlugin(num_classes=4, feature_dim=8, mem_size=20)
    >>> model = nn.Sequential(nn.Linear(5, 8), plugin.head)
    >>> model(torch.randn(3, 5)).shape  # scaled-cosine logits of the nearest-proxy classifier
    torch.Size([3, 4])
    >>> plugin.loss_on(torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 0, 1])).ndim
    0
"""

from __future__ import annotations

import copy
import io
import os
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import dill
import torch
from avalanche.benchmarks.utils.data_attribute import TaskLabels
from avalanche.checkpointing.checkpoint_internals import _CheckpointLoadingContext
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import ReplayPlugin
from avalanche.training.storage_policy import (
    ClassBalancedBuffer,
    ExemplarsBuffer,
    ExperienceBalancedBuffer,
    ReservoirSamplingBuffer,
)
from torch import Tensor, nn

from hug_plugins.io import atomic_write_bytes
from hug_plugins.losses import HUGConfig, HUGLoss, preset_config
from hug_plugins.proxies import ProxyHead, ProxyMode, optimized_proxies

__all__ = [
    "HUGPlugin",
    "ReplayMemoryPlugin",
    "class_incremental_tensors",
    "ensure_task_labels",
    "load_strategy_checkpoint",
    "make_storage_policy",
    "save_strategy_checkpoint",
]

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

    Example:
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

    Example:
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


class HUGPlugin(ReplayMemoryPlugin):
    """Trains a ``SupervisedTemplate`` strategy with the HUG loss and a replay memory.

    See the module docstring for the model contract (``head`` is the model's last layer) and
    the traps handled. The plugin is also a valid Avalanche criterion: ``Naive(model, opt,
    criterion=plugin)`` works as well as passing it in ``plugins``.

    Reference:
        Liu et al. "Generalizing and Decoupling Neural Collapse via Hyperspherical Uniformity
        Gap." ICLR 2023.

    Args:
        num_classes: Number of classes of the whole stream, ``C >= 2``
            (e.g. ``benchmark.n_classes``); labels must lie in ``[0, C)``.
        feature_dim: Feature dimension ``d`` produced by the backbone.
        proxy_mode: ``"static_optimized"`` (frozen energy-minimized proxies), ``"learnable"``
            (initialized from the optimized configuration), or any other
            :class:`~hug_plugins.proxies.ProxyHead` mode (``"partial"``, ``"static_random"``).
        hug: A :class:`~hug_plugins.losses.HUGConfig` or a preset name (see
            :func:`~hug_plugins.losses.preset_config`); ``None``: the calibrated default
            recipe, ``HUGConfig()``. Its ``logit_scale`` is set to ``scale``, so a hybrid
            cross-entropy term sees the head's logits.
        hug_weight: Multiplier of the HUG loss, > 0.
        ce_weight: Weight of the strategy's original criterion (cross-entropy by default) on
            the scaled-cosine logits, >= 0; 0 trains with HUG alone.
        scale: Logit scale of the cosine classifier (affects only the CE term and the loss
            metrics, not the predictions).
        mem_size: Replay memory size, >= 0 (0 disables replay).
        storage_policy: A policy name (``"class_balanced"``, default; ``"reservoir"``;
            ``"experience_balanced"``) or an ``ExemplarsBuffer``.
        batch_size_mem: Replayed samples per minibatch (default: the strategy's
            ``train_mb_size``).
        seed: Seed of the proxy configuration.

    Raises:
        ValueError: On invalid arguments.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> plugin = HUGPlugin(num_classes=3, feature_dim=4, proxy_mode="learnable", mem_size=0)
        >>> model = plugin.attach(nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 3)), "1")
        >>> model[1] is plugin.head
        True
    """

    def __init__(
        self,
        num_classes: int,
        feature_dim: int,
        *,
        proxy_mode: ProxyMode = "static_optimized",
        hug: HUGConfig | str | None = None,
        hug_weight: float = 1.0,
        ce_weight: float = 0.0,
        scale: float = 16.0,
        mem_size: int = 200,
        storage_policy: StoragePolicyName | str | ExemplarsBuffer = "class_balanced",
        batch_size_mem: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            mem_size=mem_size, storage_policy=storage_policy, batch_size_mem=batch_size_mem
        )
        if not (isinstance(num_classes, int) and num_classes >= 2):
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if not (isinstance(feature_dim, int) and feature_dim >= 1):
            raise ValueError(f"feature_dim must be an int >= 1, got {feature_dim!r}")
        if not hug_weight > 0:
            raise ValueError(f"hug_weight must be > 0, got {hug_weight}")
        if not ce_weight >= 0:
            raise ValueError(f"ce_weight must be >= 0, got {ce_weight}")
        config = HUGConfig() if hug is None else preset_config(hug) if isinstance(hug, str) else hug
        config = replace(config, logit_scale=float(scale))
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.hug_weight = float(hug_weight)
        self.ce_weight = float(ce_weight)
        self.loss_fn = HUGLoss(config)
        init = None
        if proxy_mode in ("learnable", "partial", "static_optimized"):
            init = optimized_proxies(num_classes, feature_dim, seed=seed)
        self.head = ProxyHead(
            num_classes, feature_dim, mode=proxy_mode, scale=scale, seed=seed, init=init
        )
        self.base_criterion: Any = nn.CrossEntropyLoss()
        self._features: Tensor | None = None
        self._hook: Any = None
        self._active = 0
        self._installed: Any = None

    # ------------------------------------------------------------------ model contract

    def attach(self, model: nn.Module, name: str) -> nn.Module:
        """Replaces the submodule ``name`` (dotted path, e.g. ``"classifier"``, ``"fc"``) of
        ``model`` by the proxy head and returns ``model``.

        Raises:
            ValueError: If the submodule does not exist.
        """
        parent_name, _, leaf = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
            parent.get_submodule(leaf)
        except AttributeError:
            raise ValueError(f"model has no submodule {name!r}") from None
        setattr(parent, leaf, self.head)
        return model

    def _check_model(self, model: nn.Module) -> None:
        if not any(module is self.head for module in model.modules()):
            raise ValueError(
                "HUGPlugin.head is not part of the strategy's model: make it the model's "
                "classification layer, e.g. nn.Sequential(backbone, plugin.head) or "
                "plugin.attach(model, 'classifier'), and build the optimizer afterwards"
            )

    def _capture(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._features = args[0]

    # ------------------------------------------------------------------ criterion

    def loss_on(self, features: Tensor, labels: Tensor, logits: Tensor | None = None) -> Tensor:
        """The plugin's loss on explicit features: ``hug_weight * HUG + ce_weight * CE``.

        Args:
            features: ``(B, d)`` features (the head's input).
            labels: ``(B,)`` labels in ``[0, C)``.
            logits: ``(B, C)`` outputs for the CE term (default: the head's logits).

        Returns:
            The scalar loss.
        """
        loss: Tensor = self.hug_weight * self.loss_fn(features, labels, self.head.proxies)
        if self.ce_weight > 0:
            if logits is None:
                logits = self.head(features)
            ce: Tensor = self.base_criterion(logits, labels)
            loss = loss + self.ce_weight * ce
        return loss

    def __call__(self, mb_output: Tensor, mb_y: Tensor) -> Tensor:
        """Avalanche criterion interface: the loss of the current minibatch.

        Raises:
            RuntimeError: If the head did not run in the last forward pass.
        """
        features = self._features
        if features is None or features.shape[0] != mb_y.shape[0]:
            raise RuntimeError(
                "HUGPlugin found no features of this minibatch: the model's forward must call "
                "plugin.head on the (B, feature_dim) features (see the module docstring)"
            )
        return self.loss_on(features, mb_y.long(), mb_output)

    def _activate(self, strategy: Any) -> None:
        if self._active == 0:
            self._check_model(strategy.model)
            self._hook = self.head.register_forward_pre_hook(self._capture)
            if strategy._criterion is not self:
                self._installed = strategy._criterion
                self.base_criterion = strategy._criterion
                strategy._criterion = self
        self._active += 1

    def _deactivate(self, strategy: Any) -> None:
        self._active = max(0, self._active - 1)
        if self._active == 0:
            if self._hook is not None:
                self._hook.remove()
                self._hook = None
            if self._installed is not None and strategy._criterion is self:
                strategy._criterion = self._installed
            self._installed = None
            self._features = None

    # ------------------------------------------------------------------ Avalanche hooks

    def before_training(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        """Installs the feature hook and the HUG criterion."""
        self._activate(strategy)

    def after_training(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        """Removes the hook and restores the strategy's criterion."""
        self._deactivate(strategy)

    def before_eval(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        """Installs the hook and criterion for evaluation (eval may run inside training)."""
        self._activate(strategy)

    def after_eval(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        """Undoes :meth:`before_eval`."""
        self._deactivate(strategy)

    def after_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        """Drops the captured features (and their graph)."""
        self._features = None

    def after_eval_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        """Drops the captured features."""
        self._features = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_features=None, _hook=None, _active=0, _installed=None)
        return state

    @staticmethod
    def of(strategy: Any) -> HUGPlugin:
        """The strategy's :class:`HUGPlugin` (after a checkpoint load the old object is stale).

        Raises:
            ValueError: If the strategy has none.
        """
        for plugin in strategy.plugins:
            if isinstance(plugin, HUGPlugin):
                return plugin
        raise ValueError("the strategy has no HUGPlugin")


# ---------------------------------------------------------------------- benchmarks


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

    Like ``avalanche.checkpointing.save_checkpoint`` (dill pickle of the strategy, the global
    RNG states and the experience counter), but the optimizer object is excluded -- pickling it
    with dill fails on torch 2.14 -- and its ``state_dict`` is stored instead, keyed by the names
    of the model's parameters. Objects holding the optimizer (e.g. an LR-scheduler plugin) must
    be re-created by the caller.

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
    shallow = copy.copy(strategy)
    del shallow.optimizer
    data = {
        "strategy": shallow,
        "rng_manager": RNGManager,
        "exp_counter": strategy.clock.train_exp_counter,
        "optimizer_state": strategy.optimizer.state_dict(),
        "optimizer_param_names": param_names,
    }
    buffer = io.BytesIO()
    torch.save(data, buffer, pickle_module=dill)
    return atomic_write_bytes(path, buffer.getvalue())


def load_strategy_checkpoint(
    strategy: Any,
    path: str | os.PathLike[str],
    map_location: str | torch.device | None = None,
) -> tuple[Any, int]:
    """Restores a strategy saved by :func:`save_strategy_checkpoint`, in place.

    ``strategy`` must be freshly built like the saved one (same model architecture, optimizer
    class and plugins); its state is replaced by the saved one (model, plugins with their replay
    memory and proxies, evaluator, clock, RNG states) and its optimizer is rebound to the
    restored model's parameters and loaded with the saved state. If ``path`` does not exist the
    strategy is returned unchanged with counter 0, as Avalanche's ``maybe_load_checkpoint``.

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
    location: Any = map_location
    if isinstance(map_location, (str, torch.device)):
        device = str(torch.device(map_location))
        location = {"cpu": "cpu", **{f"cuda:{i}": device for i in range(100)}}
    with _CheckpointLoadingContext(location, None):
        ckp = torch.load(path, pickle_module=dill, map_location=location, weights_only=False)
    optimizer = strategy.optimizer
    strategy.__dict__.update(ckp["strategy"].__dict__)
    strategy.optimizer = optimizer
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
    return strategy, int(ckp["exp_counter"])
