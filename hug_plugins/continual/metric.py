"""Neural-collapse metrics per evaluated experience, as an Avalanche ``PluginMetric``."""

from __future__ import annotations

from typing import Any

import torch
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metric_utils import get_metric_name
from torch import Tensor, nn

from hug_plugins.metrics import NCMAgreement, NeuralCollapseMetrics, classifier_weight_of

__all__ = ["NeuralCollapsePluginMetric"]


class NeuralCollapsePluginMetric(PluginMetric[dict[str, float]]):  # type: ignore[misc]
    """NC1, NC2, GNC2, NC3 and NC4 of the penultimate features of each evaluated experience.

    Add it to an ``EvaluationPlugin``, like Avalanche's own metrics; its values reach every
    logger (text, TensorBoard, ...) as ``NC/<metric>/eval_phase/<stream>/Exp<id>``. The
    features are the input of ``feature_layer`` of the strategy's model (default: its last
    submodule, e.g. the :class:`~hug_plugins.continual.HUGPlugin` head or a linear
    classifier), whose weight (``proxies`` or ``weight``) is the classifier for NC3. NC4
    compares the model's predictions with the nearest class mean of the experience's features,
    which are kept on the CPU until the experience is done (``O(N d)``).

    Args:
        num_classes: Number of classes of the whole stream.
        feature_layer: Dotted name of the submodule whose input are the features (default:
            the model's last submodule).

    Examples:
        >>> metric = NeuralCollapsePluginMetric(num_classes=10)
        >>> str(metric)
        'NC'
    """

    def __init__(self, num_classes: int, feature_layer: str | None = None) -> None:
        super().__init__()
        if not (isinstance(num_classes, int) and num_classes >= 2):
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.num_classes = num_classes
        self.feature_layer = feature_layer
        self._features: Tensor | None = None
        self._hook: Any = None
        self._layer: nn.Module | None = None
        self._batches: list[tuple[Tensor, Tensor, Tensor]] = []
        self._result: dict[str, float] = {}

    def __str__(self) -> str:
        return "NC"

    def reset(self) -> None:
        """Forgets the features of the experience."""
        self._batches = []
        self._result = {}

    def result(self) -> dict[str, float]:
        """The metrics of the last evaluated experience."""
        return dict(self._result)

    def _layer_of(self, model: nn.Module) -> nn.Module:
        if self.feature_layer is not None:
            return model.get_submodule(self.feature_layer)
        children = list(model.children())
        if not children:
            raise ValueError("the model has no submodule: give feature_layer")
        return children[-1]

    def before_eval_exp(self, strategy: Any) -> None:
        """Hooks the feature layer of the strategy's model."""
        self.reset()
        self._layer = self._layer_of(strategy.model)

        def capture(module: nn.Module, args: tuple[Any, ...]) -> None:
            self._features = args[0]

        self._hook = self._layer.register_forward_pre_hook(capture)

    def after_eval_iteration(self, strategy: Any) -> None:
        """Keeps the minibatch's features, labels and predictions (detached, on the CPU)."""
        if self._features is not None:
            features = self._features.detach().float().cpu()
            predictions = strategy.mb_output.detach().argmax(1).cpu()
            self._batches.append((features, strategy.mb_y.detach().cpu(), predictions))
        self._features = None

    def after_eval_exp(self, strategy: Any) -> list[MetricValue]:
        """Computes the metrics of the experience and emits them."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if not self._batches:
            return []
        features = torch.cat([b[0] for b in self._batches])
        labels = torch.cat([b[1] for b in self._batches]).long()
        predictions = torch.cat([b[2] for b in self._batches])
        collapse = NeuralCollapseMetrics(self.num_classes, features.shape[1])
        weight = classifier_weight_of(self._layer, self.num_classes, features.shape[1])
        collapse.update(features, labels, weight)
        values = {key: float(value) for key, value in collapse.compute().items()}
        means, present = collapse.class_means()
        if int(present.sum()) >= 1:
            agreement = NCMAgreement(means, present)
            agreement.update(features, labels, predictions)
            values["nc4_mismatch"] = float(agreement.compute()["nc4_mismatch"])
        self._result = values
        x = strategy.clock.train_iterations
        return [
            MetricValue(self, get_metric_name(f"NC/{key}", strategy, add_experience=True,
                                              add_task=False), value, x)
            for key, value in values.items()
        ]  # fmt: skip
