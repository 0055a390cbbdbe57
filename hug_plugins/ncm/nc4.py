"""NC4: agreement between a model's decisions and the nearest-class-mean rule, in one pass."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from hug_plugins._checks import check_matrix
from hug_plugins.metrics import NCMAgreement
from hug_plugins.ncm.bounds import Backend, Metric
from hug_plugins.ncm.classifier import Batch, NCMClassifier, default_split
from hug_plugins.ncm.index import NearestMeanIndex

# --------------------------------------------------------------------------------------------
# NC4
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NC4Report:
    """NC4 summary.

    Attributes:
        num_samples: Samples seen.
        agreement: Fraction where the model's decision equals the NCM decision (1.0 under
            full collapse).
        model_accuracy: Accuracy of the model's decision.
        ncm_accuracy: Accuracy of the NCM decision.
        rechecked: Queries the exact search re-scored in float64.
        backend: Backend of the NCM index.
    """

    num_samples: int
    agreement: float
    model_accuracy: float
    ncm_accuracy: float
    rechecked: int = 0
    backend: str = ""

    @property
    def mismatch(self) -> float:
        """NC4 as in Papyan et al.: fraction of disagreements, ``1 - agreement``."""
        return 1.0 - self.agreement

    def as_dict(self) -> dict[str, Any]:
        """Fields plus ``mismatch`` as a plain dict."""
        return {**asdict(self), "mismatch": self.mismatch}


class NC4Meter:
    """Streaming NC4 at scale: :class:`~hug_plugins.metrics.NCMAgreement`'s counts with the
    exact :class:`NearestMeanIndex` search as the NCM rule (FAISS or chunked torch, float64
    re-check of near ties), so large ``C`` never builds a dense ``(n, C)`` float64 block.

    The model's decision is ``logits.argmax(1)``, an explicit ``decisions`` tensor, or, when
    ``proxies`` are given (HUG), the nearest proxy by cosine (exact, through
    :class:`NearestMeanIndex`).

    Args:
        ncm: A fitted :class:`NCMClassifier` or a :class:`NearestMeanIndex`.
        proxies: Optional ``(C, d)`` class proxies for nearest-proxy decisions.
        backend: Backend of the proxy index.
        num_classes: Label range ``[0, num_classes)`` (default: the classifier's classes, or
            the largest class id of the index + 1).

    Examples:
        >>> ncm = NCMClassifier(2, 2, backend="torch").fit(torch.eye(2), torch.tensor([0, 1]))
        >>> meter = NC4Meter(ncm)
        >>> meter.update(torch.eye(2), torch.tensor([0, 1]), logits=torch.eye(2))
        >>> meter.compute().agreement
        1.0
    """

    def __init__(
        self,
        ncm: NCMClassifier | NearestMeanIndex,
        *,
        proxies: Tensor | None = None,
        backend: Backend = "auto",
        num_classes: int | None = None,
    ) -> None:
        self.index = ncm.build() if isinstance(ncm, NCMClassifier) else ncm
        if num_classes is None:
            num_classes = (
                ncm.num_classes
                if isinstance(ncm, NCMClassifier)
                else int(self.index.class_ids.max()) + 1
            )
        self.num_classes = int(num_classes)
        self.proxy_index = (
            NearestMeanIndex(proxies, metric="cosine", backend=backend)
            if proxies is not None
            else None
        )
        self.reset()

    def reset(self) -> None:
        """Clears the counters."""
        # The counting is NCMAgreement's; the NCM decision is the exact index search.
        self.counts = NCMAgreement(
            None,
            nearest=self.index.search,
            num_classes=self.num_classes,
            dim=self.index.dim,
            sync_on_compute=False,
        )

    def update(
        self,
        features: Tensor,
        labels: Tensor,
        *,
        logits: Tensor | None = None,
        decisions: Tensor | None = None,
    ) -> None:
        """Adds a batch.

        Args:
            features: ``(n, d)`` penultimate features.
            labels: ``(n,)`` true labels.
            logits: ``(n, C)`` scores; decision = argmax (ignored when proxies were given).
            decisions: ``(n,)`` model decisions, instead of logits.

        Raises:
            ValueError: If no decision source is available, or on shape mismatches.
        """
        check_matrix(features, "features")
        n = features.shape[0]
        if self.proxy_index is not None:
            dec = self.proxy_index.search(features)
        elif decisions is not None:
            dec = decisions.detach().cpu()
        elif logits is not None:
            if logits.ndim != 2 or logits.shape[0] != n:
                raise ValueError(f"logits must have shape ({n}, C), got {tuple(logits.shape)}")
            dec = logits.detach().argmax(1).cpu()
        else:
            raise ValueError("pass logits or decisions (or build the meter with proxies)")
        self.counts.update(features.detach(), labels.detach().cpu(), dec)

    def compute(self) -> NC4Report:
        """Returns the :class:`NC4Report` of everything seen since :meth:`reset`."""
        total = int(self.counts.total)
        if total == 0:
            raise ValueError("NC4Meter.compute() called before any update()")
        out = self.counts.compute()
        return NC4Report(
            num_samples=total,
            agreement=float(out["nc4_agreement"]),
            model_accuracy=float(out["model_accuracy"]),
            ncm_accuracy=float(out["ncm_accuracy"]),
            rechecked=int(self.index.stats["rechecked"]),
            backend=self.index.backend,
        )


def nc4_report(
    model: Callable[[Tensor], tuple[Tensor, Tensor]],
    loader: Iterable[Batch],
    ncm: NCMClassifier | NearestMeanIndex | None = None,
    *,
    fit_loader: Iterable[Batch] | None = None,
    proxies: Tensor | None = None,
    metric: Metric = "l2",
    device: torch.device | str | None = None,
    **ncm_options: Any,
) -> NC4Report:
    """NC4 report of ``model`` on ``loader`` in one evaluation pass.

    ``model(x)`` must return ``(features, logits)``. With a fitted ``ncm`` the report takes one
    pass over ``loader``. Without it, the class means are first accumulated over ``fit_loader``
    (default: ``loader`` itself, i.e. two passes in total), as NC4 compares against the means of
    the training features. The model is put in eval mode and restored afterwards.

    Args:
        model: Returns ``(features, logits)``.
        loader: ``(inputs, labels)`` batches to evaluate.
        ncm: A fitted classifier or index; built from ``fit_loader`` when ``None``.
        fit_loader: Data for the class means (when ``ncm`` is ``None``).
        proxies: Class proxies; the model's decision becomes the nearest proxy (HUG).
        metric: NCM metric when the means are built here.
        device: Where inputs are moved before ``model``.
        **ncm_options: Passed to :class:`NCMClassifier` when it is built here.

    Returns:
        The :class:`NC4Report`.

    Examples:
        >>> lin = torch.nn.Linear(2, 2)
        >>> model = lambda x: (x, lin(x))
        >>> data = [(torch.eye(2), torch.tensor([0, 1]))]
        >>> nc4_report(model, data, backend="torch").num_samples
        2
    """
    was_training: bool | None = None
    if isinstance(model, torch.nn.Module):
        was_training = model.training
        model.eval()
    try:
        with torch.no_grad():
            if ncm is None:
                clf: NCMClassifier | None = None
                for batch in fit_loader if fit_loader is not None else loader:
                    x, y = default_split(batch)
                    if device is not None:
                        x = x.to(device)
                    feats, logits = model(x)
                    if clf is None:
                        clf = NCMClassifier(
                            int(logits.shape[1]),
                            int(feats.shape[1]),
                            metric=metric,
                            **ncm_options,
                        )
                    clf.update(feats, y)
                if clf is None:
                    raise ValueError("fit data is empty")
                ncm = clf
            meter = NC4Meter(ncm, proxies=proxies)
            for batch in loader:
                x, y = default_split(batch)
                if device is not None:
                    x = x.to(device)
                feats, logits = model(x)
                meter.update(feats, y, logits=logits)
            return meter.compute()
    finally:
        if was_training is not None and isinstance(model, torch.nn.Module):
            model.train(was_training)
