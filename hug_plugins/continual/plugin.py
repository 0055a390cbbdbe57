"""The HUG loss as an Avalanche criterion (see :mod:`hug_plugins.continual`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from avalanche.core import SupervisedPlugin
from torch import Tensor, nn

from hug_plugins.functional.terms import HUGOptions, resolve_config, with_hug_keywords
from hug_plugins.losses import HUGConfig, HUGLoss
from hug_plugins.proxies import ProxyHead, ProxyMode, optimized_proxies

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["HUGPlugin"]


class HUGPlugin(SupervisedPlugin):  # type: ignore[misc]
    """Trains an Avalanche ``SupervisedTemplate`` strategy with the HUG loss.

    Pass it as the strategy's criterion, ``Naive(model, opt, criterion=plugin,
    plugins=[ReplayPlugin(...)])``: Avalanche adds a criterion that is a plugin to the
    strategy's plugins itself, as for its own ``ICaRLLossPlugin``. The plugin holds the proxy
    head (one proxy per class of the whole stream, so later classes never collide with earlier
    ones) and the :class:`~hug_plugins.losses.HUGLoss`; replay is Avalanche's own
    ``ReplayPlugin`` (or :class:`~hug_plugins.continual.ReplayMemoryPlugin`), composed in
    ``plugins=[...]``.

    ``plugin.head`` must be the model's classification layer (``nn.Sequential(backbone,
    plugin.head)`` or :meth:`attach`): its input is the feature batch HUG sees (captured by a
    forward pre-hook on the head while the strategy trains or evaluates), its output the
    scaled-cosine logits, so Avalanche's accuracy metrics work unchanged. Create the optimizer
    after attaching the head, so learnable proxies are optimized.

    Reference:
        Liu et al. "Generalizing and Decoupling Neural Collapse via Hyperspherical Uniformity
        Gap." ICLR 2023.

    Args:
        num_classes: Number of classes of the whole stream, ``C >= 2``
            (e.g. ``benchmark.n_classes``); labels must lie in ``[0, C)``.
        feature_dim: Feature dimension ``d`` produced by the backbone.
        config: A :class:`~hug_plugins.losses.HUGConfig` or a preset name; default preset
            ``"pure"`` (``HUGConfig()``, decoupled HUG: the continual tables' recipe, and with
            static proxies a step costs ``O(B d)``). Its ``logit_scale`` is the head's logit
            scale; ``ce_weight > 0`` (e.g. ``config="default"``, ``HUGLoss()``'s recipe) adds
            cross-entropy on those logits.
        proxy_mode: ``"static_optimized"`` (frozen energy-minimized proxies), ``"learnable"``
            (initialized from the optimized configuration), or any other
            :class:`~hug_plugins.proxies.ProxyHead` mode.
        seed: Seed of the proxy configuration.
        **overrides: Keyword-only :class:`~hug_plugins.losses.HUGConfig` fields, as in every
            HUG adapter.

    Raises:
        ValueError: On invalid arguments.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> plugin = HUGPlugin(num_classes=4, feature_dim=8)
        >>> model = nn.Sequential(nn.Linear(5, 8), plugin.head)
        >>> model(torch.randn(3, 5)).shape  # scaled-cosine logits of the nearest-proxy rule
        torch.Size([3, 4])
        >>> plugin.loss_on(torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 0, 1])).ndim
        0
    """

    default_preset: ClassVar[str] = "pure"
    """The preset a plugin built without ``config`` starts from (decoupled HUG)."""

    @with_hug_keywords(default_preset)
    def __init__(
        self,
        num_classes: int,
        feature_dim: int,
        config: HUGConfig | str | None = None,
        *,
        proxy_mode: ProxyMode = "static_optimized",
        seed: int = 0,
        **overrides: Unpack[HUGOptions],
    ) -> None:
        super().__init__()
        if not (isinstance(num_classes, int) and num_classes >= 2):
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if not (isinstance(feature_dim, int) and feature_dim >= 1):
            raise ValueError(f"feature_dim must be an int >= 1, got {feature_dim!r}")
        self.config = resolve_config(config, overrides, default=self.default_preset)
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.loss_fn = HUGLoss(self.config)
        init = None
        if proxy_mode in ("learnable", "partial", "static_optimized"):
            init = optimized_proxies(num_classes, feature_dim, seed=seed)
        self.head = ProxyHead(
            num_classes,
            feature_dim,
            mode=proxy_mode,
            scale=self.config.logit_scale,
            seed=seed,
            init=init,
        )
        self._features: Tensor | None = None
        self._hook: Any = None
        self._hooked: nn.Module | None = None
        self._calls = 0

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

    def loss_on(self, features: Tensor, labels: Tensor) -> Tensor:
        """The plugin's loss on explicit ``(B, d)`` features and ``(B,)`` labels."""
        loss: Tensor = self.loss_fn(features, labels, self.head.proxies)
        return loss

    def __call__(self, mb_output: Tensor, mb_y: Tensor) -> Tensor:
        """Avalanche's criterion interface: the HUG loss of the current minibatch.

        Raises:
            RuntimeError: If the head did not run on this minibatch's features.
        """
        features = self._features
        if features is None or features.shape[0] != mb_y.shape[0]:
            raise RuntimeError(
                "HUGPlugin found no features of this minibatch: the model's forward must call "
                "plugin.head on the (B, feature_dim) features (see the class docstring)"
            )
        self._calls += 1
        return self.loss_on(features, mb_y.long())

    def _bind(self, strategy: Any) -> None:
        """Hooks the strategy model's proxy head: ``self.head``, or the one copy of it a
        strategy made (GDumb re-creates its model from a copy every experience)."""
        heads = [m for m in strategy.model.modules() if isinstance(m, ProxyHead)]
        if not any(head is self.head for head in heads):
            if len(heads) != 1 or heads[0].proxies.shape != self.head.proxies.shape:
                raise ValueError(
                    "HUGPlugin.head is not part of the strategy's model: make it the model's "
                    "classification layer, e.g. nn.Sequential(backbone, plugin.head) or "
                    "plugin.attach(model, 'classifier'), and build the optimizer afterwards"
                )
            self.head = heads[0]
        if self._hooked is not self.head:
            self._unbind()

            def capture(module: nn.Module, args: tuple[Any, ...]) -> None:
                self._features = args[0]

            self._hook = self.head.register_forward_pre_hook(capture)
            self._hooked = self.head

    def _unbind(self) -> None:
        if self._hook is not None:
            self._hook.remove()
        self._hook = None
        self._hooked = None
        self._features = None

    def before_training(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        """Hooks the head, to capture its input."""
        self._bind(strategy)

    def before_training_epoch(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        """Re-hooks the head if the strategy replaced its model since."""
        self._bind(strategy)

    def after_training(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        """Removes the hook."""
        self._unbind()

    def before_eval(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        """Hooks the head for evaluation (which may run inside training)."""
        self._bind(strategy)

    def after_eval(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        """Keeps the hook if evaluation ran inside training, else removes it."""
        if not strategy.is_training:
            self._unbind()

    def after_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        """Checks that the strategy's loss came from this plugin at least once.

        Raises:
            RuntimeError: If the plugin is in ``plugins=[...]`` but not the criterion.
        """
        if self._calls == 0:
            raise RuntimeError(
                "HUGPlugin is not the strategy's criterion: pass it as "
                "Naive(model, optimizer, criterion=plugin, plugins=[...])"
            )

    def after_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        """Drops the captured features (and their graph)."""
        self._features = None

    def after_eval_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        """Drops the captured features."""
        self._features = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_features=None, _hook=None, _hooked=None)
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
