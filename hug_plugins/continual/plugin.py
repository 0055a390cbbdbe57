"""The HUG loss as an Avalanche strategy plugin (see :mod:`hug_plugins.continual`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from avalanche.training.storage_policy import (
    ExemplarsBuffer,
)
from torch import Tensor, nn

from hug_plugins.continual.replay import ReplayMemoryPlugin, StoragePolicyName
from hug_plugins.losses import HUGConfig, HUGLoss, preset_config
from hug_plugins.proxies import ProxyHead, ProxyMode, optimized_proxies

__all__ = ["HUGPlugin"]


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
