"""Lightning adapter: watch neural collapse while training (NC1-NC4, GNC2, HUG's terms).

:class:`NeuralCollapseCallback` gathers the penultimate features of the training or
validation set each epoch and logs the collapse metrics to the trainer's loggers; under DDP
the metrics are those of the whole set (torchmetrics syncs the states). Written against
lightning 2.x.

Examples:
    >>> callback = NeuralCollapseCallback(num_classes=10, feature_layer="head")
    >>> callback.stage
    'validation'
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor, nn

from hug_plugins._extras import require_extra
from hug_plugins.functional.terms import HUGTerms
from hug_plugins.metrics import NCMAgreement, NeuralCollapseMetrics, classifier_weight_of

require_extra("lightning", "lightning", "hug_plugins.lightning (NeuralCollapseCallback)")

from lightning.pytorch.callbacks import Callback  # noqa: E402

__all__ = ["NeuralCollapseCallback"]

Stage = Literal["train", "validation"]


class NeuralCollapseCallback(Callback):
    """Logs NC1, NC2 (equinorm, equiangularity), GNC2, NC3 and NC4 once per epoch.

    The features are the input of ``feature_layer`` (the classifier: an ``nn.Linear`` or a
    :class:`~hug_plugins.proxies.ProxyHead`), captured by a forward hook during the steps of
    ``stage``; the classifier's weight (or proxies) serves NC3, its output's argmax NC4. Keys
    are ``<prefix>/<metric>`` (e.g. ``nc/nc1``, ``nc/gnc2_ratio``, ``nc/nc4_mismatch``). With
    ``log_hug_terms``, every HUG loss in the module (anything with HUG ``last_terms``) also logs
    ``hug/inter``, ``hug/intra`` and ``hug/loss`` per training epoch. NC4 keeps the epoch's
    features of the rank until the epoch ends (``O(N d)``).

    Args:
        num_classes: Number of classes ``C``.
        feature_layer: Dotted name of the classifier submodule of the ``LightningModule``
            (default: its last child module).
        stage: ``"validation"`` (default; skipped during the sanity check) or ``"train"``.
        prefix: Prefix of the logged keys.
        label_index: Position of the labels in a batch (``batch[label_index]``).
        log_hug_terms: Whether to log the HUG terms of the module's HUG losses.

    Raises:
        ValueError: On a bad ``num_classes`` or ``stage``.
    """

    def __init__(
        self,
        num_classes: int,
        feature_layer: str | None = None,
        *,
        stage: Stage = "validation",
        prefix: str = "nc",
        label_index: int = 1,
        log_hug_terms: bool = True,
    ) -> None:
        super().__init__()
        if not (isinstance(num_classes, int) and num_classes >= 2):
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if stage not in ("train", "validation"):
            raise ValueError(f"stage must be 'train' or 'validation', got {stage!r}")
        self.num_classes = num_classes
        self.feature_layer = feature_layer
        self.stage: Stage = stage
        self.prefix = prefix
        self.label_index = label_index
        self.log_hug_terms = log_hug_terms
        self._hook: Any = None
        self._layer: nn.Module | None = None
        self._captured: tuple[Tensor, Any] | None = None
        self._metric: NeuralCollapseMetrics | None = None
        self._batches: list[tuple[Tensor, Tensor, Tensor | None]] = []

    # ------------------------------------------------------------------ collection

    def _start(self, pl_module: nn.Module) -> None:
        self._stop()
        layer: nn.Module
        if self.feature_layer is not None:
            layer = pl_module.get_submodule(self.feature_layer)
        else:
            children = list(pl_module.children())
            if not children:
                raise ValueError("the LightningModule has no submodule: give feature_layer")
            layer = children[-1]
        self._layer = layer

        def capture(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            self._captured = (args[0].detach(), output)

        self._hook = layer.register_forward_hook(capture)
        self._metric = None
        self._batches = []

    def _stop(self) -> None:
        if self._hook is not None:
            self._hook.remove()
        self._hook = None
        self._captured = None

    def _collect(self, batch: Any) -> None:
        if self._captured is None or self._hook is None:
            return
        features, output = self._captured
        self._captured = None
        labels = batch[self.label_index].to(features.device).long()
        features = features.float().reshape(features.shape[0], -1)
        if self._metric is None:
            self._metric = NeuralCollapseMetrics(self.num_classes, features.shape[1]).to(
                features.device
            )
        self._metric.update(
            features, labels, classifier_weight_of(self._layer, self.num_classes, features.shape[1])
        )
        predictions = None
        if isinstance(output, Tensor) and output.ndim == 2 and output.shape[1] == self.num_classes:
            predictions = output.detach().argmax(1)
        self._batches.append((features, labels, predictions))

    def _finish(self, pl_module: Any) -> None:
        self._stop()
        metric = self._metric
        if metric is None:
            return
        values = dict(metric.compute())  # synced over the ranks by torchmetrics
        if self._batches and all(p is not None for _, _, p in self._batches):
            with metric.sync_context():
                means, present = metric.class_means()
            agreement = NCMAgreement(means, present).to(means.device)
            for features, labels, predictions in self._batches:
                assert predictions is not None
                agreement.update(features, labels, predictions)
            values["nc4_mismatch"] = agreement.compute()["nc4_mismatch"]
        self._batches = []
        # Equal on every rank already; "max" keeps them exact under sync_dist.
        pl_module.log_dict(
            {f"{self.prefix}/{key}": value.float() for key, value in values.items()},
            on_step=False,
            on_epoch=True,
            sync_dist=True,
            reduce_fx="max",
        )

    # ------------------------------------------------------------------ Lightning hooks

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        """Hooks the classifier when collecting the training set."""
        if self.stage == "train":
            self._start(pl_module)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Collects the batch's features; logs the HUG terms of the step."""
        if self.stage == "train":
            self._collect(batch)
        if self.log_hug_terms:
            for module in pl_module.modules():
                terms = getattr(module, "last_terms", None)
                if isinstance(terms, HUGTerms):
                    pl_module.log_dict(
                        {
                            "hug/loss": terms.loss.float(),
                            "hug/inter": terms.inter.float(),
                            "hug/intra": terms.intra.float(),
                        },
                        on_step=False,
                        on_epoch=True,
                    )
                    break

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Computes and logs the training set's metrics."""
        if self.stage == "train":
            self._finish(pl_module)

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        """Hooks the classifier when collecting the validation set."""
        if self.stage == "validation" and not trainer.sanity_checking:
            self._start(pl_module)

    def on_validation_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Collects the batch's features."""
        if self.stage == "validation" and not trainer.sanity_checking:
            self._collect(batch)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Computes and logs the validation set's metrics."""
        if self.stage == "validation" and not trainer.sanity_checking:
            self._finish(pl_module)
