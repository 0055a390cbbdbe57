"""Streaming class means and the nearest-class-mean classifier built on them."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import Tensor

from hug_plugins._checks import check_labels, check_matrix
from hug_plugins.ncm.bounds import Metric, check_metric
from hug_plugins.ncm.index import NearestMeanIndex

# --------------------------------------------------------------------------------------------
# Streaming class means
# --------------------------------------------------------------------------------------------


class ClassMeanAccumulator:
    """Streaming per-class sums and counts, O(C * d) memory.

    Each :meth:`update` does one ``index_add_`` into the sums and one ``bincount`` into the
    counts. The default float32 sums follow the issue's memory budget (4 bytes per entry); the
    relative error of a float32 running sum of ``n`` terms is bounded by ``n * 2^-24`` (about
    ``sqrt(n) * 2^-24`` in practice), i.e. below 1e-4 for a million samples per class.
    ``dtype=torch.float64`` doubles the memory and makes the means exact to float64, which
    lets :class:`NearestMeanIndex` reproduce the float64 rule computed from raw features.

    Classes without samples have no mean: :meth:`means` returns NaN rows for them and
    :meth:`present_means` leaves them out (so an all-zero vector can never win a query).

    Args:
        num_classes: Number of classes ``C``.
        dim: Feature width ``d``.
        dtype: Accumulation dtype (float32 or float64).
        device: Where the sums live.

    Examples:
        >>> acc = ClassMeanAccumulator(3, 2)
        >>> acc.update(torch.tensor([[1.0, 0.0], [3.0, 0.0]]), torch.tensor([0, 0]))
        >>> means, ids = acc.present_means()
        >>> means.tolist(), ids.tolist()
        ([[2.0, 0.0]], [0])
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if num_classes < 1 or dim < 1:
            raise ValueError(f"num_classes and dim must be >= 1, got {num_classes}, {dim}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.sums = torch.zeros(num_classes, dim, dtype=dtype, device=device)
        self.counts = torch.zeros(num_classes, dtype=torch.long, device=device)

    def update(self, features: Tensor, labels: Tensor) -> None:
        """Adds a batch of ``(n, d)`` features with ``(n,)`` integer labels.

        Raises:
            ValueError: On a shape mismatch, labels out of ``[0, C)`` or non-finite features.
        """
        check_matrix(features, "features", self.dim)
        check_labels(labels, features.shape[0], self.num_classes)
        device = self.sums.device
        labels = labels.detach().to(device=device, dtype=torch.long)
        self.sums.index_add_(0, labels, features.detach().to(device=device, dtype=self.sums.dtype))
        self.counts += torch.bincount(labels, minlength=self.num_classes)

    def merge(self, other: ClassMeanAccumulator) -> None:
        """Adds another accumulator's sums and counts (e.g. from another data shard)."""
        if (other.num_classes, other.dim) != (self.num_classes, self.dim):
            raise ValueError("accumulators differ in num_classes or dim")
        self.sums += other.sums.to(self.sums)
        self.counts += other.counts.to(self.counts.device)

    @property
    def present(self) -> Tensor:
        """``(C,)`` bool mask of the classes with at least one sample."""
        return self.counts > 0

    def means(self) -> Tensor:
        """``(C, d)`` class means; rows of empty classes are NaN."""
        counts = self.counts.to(self.sums.dtype)[:, None]
        return torch.where(counts > 0, self.sums / counts.clamp_min(1), math.nan)

    def present_means(self) -> tuple[Tensor, Tensor]:
        """Means of the non-empty classes and their class ids (increasing).

        Raises:
            ValueError: If no class has a sample.
        """
        ids = self.present.nonzero()[:, 0]
        if ids.numel() == 0:
            raise ValueError("no class has any sample; call update() first")
        return self.sums[ids] / self.counts[ids].to(self.sums.dtype)[:, None], ids.cpu()


# --------------------------------------------------------------------------------------------
# Classifier
# --------------------------------------------------------------------------------------------

Batch = Any
FeatureFn = Callable[[Batch], tuple[Tensor, Tensor]]


def default_split(batch: Batch) -> tuple[Tensor, Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError("loader batches must be (inputs, labels) pairs")


class NCMClassifier:
    """Nearest-class-mean classifier: streaming means + :class:`NearestMeanIndex`.

    Args:
        num_classes: Number of classes ``C``.
        dim: Feature width ``d``.
        metric: ``"l2"`` or ``"cosine"`` (for normalized features; means are normalized
            after averaging).
        accum_dtype: Dtype of the class sums (see :class:`ClassMeanAccumulator`).
        device: Where the sums live.
        on_empty: ``"exclude"`` (default; empty classes are left out of the index, never
            predicted, and a ``UserWarning`` names how many) or ``"raise"`` (``ValueError``).
        **index_options: Passed to :class:`NearestMeanIndex` (backend, approximate, ...).

    Examples:
        >>> ncm = NCMClassifier(2, 2, backend="torch")
        >>> _ = ncm.fit(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 1]))
        >>> ncm.predict(torch.tensor([[0.9, 0.1]])).tolist()
        [1]
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        *,
        metric: Metric = "l2",
        accum_dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        on_empty: Literal["exclude", "raise"] = "exclude",
        **index_options: Any,
    ) -> None:
        check_metric(metric)
        if on_empty not in ("exclude", "raise"):
            raise ValueError(f"on_empty must be 'exclude' or 'raise', got {on_empty!r}")
        self.metric: Metric = metric
        self.on_empty = on_empty
        self.index_options = index_options
        self.accumulator = ClassMeanAccumulator(num_classes, dim, dtype=accum_dtype, device=device)
        self._index: NearestMeanIndex | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes ``C``."""
        return self.accumulator.num_classes

    @property
    def dim(self) -> int:
        """Feature width ``d``."""
        return self.accumulator.dim

    def update(self, features: Tensor, labels: Tensor) -> None:
        """Adds a batch to the class means (invalidates a built index)."""
        self.accumulator.update(features, labels)
        self._index = None

    def fit(self, features: Tensor, labels: Tensor) -> NCMClassifier:
        """Adds ``features``/``labels`` and returns ``self``."""
        self.update(features, labels)
        return self

    def fit_loader(
        self,
        loader: Iterable[Batch],
        model: Callable[[Tensor], Any] | None = None,
        *,
        device: torch.device | str | None = None,
    ) -> NCMClassifier:
        """Accumulates means over a loader of ``(inputs, labels)`` batches.

        Args:
            loader: Iterable of ``(inputs, labels)``.
            model: If given, ``model(inputs)`` returns ``(features, logits)`` (or features);
                otherwise the inputs are the features.
            device: Where inputs go before ``model``.

        Returns:
            ``self``.
        """
        with torch.no_grad():
            for batch in loader:
                x, y = default_split(batch)
                if device is not None:
                    x = x.to(device)
                feats = x
                if model is not None:
                    out = model(x)
                    feats = out[0] if isinstance(out, (tuple, list)) else out
                self.update(feats, y)
        return self

    def build(self) -> NearestMeanIndex:
        """Builds (or returns the cached) index over the present class means."""
        if self._index is not None:
            return self._index
        missing = int((~self.accumulator.present).sum())
        if missing:
            msg = f"{missing} of {self.num_classes} classes have no samples"
            if self.on_empty == "raise":
                raise ValueError(msg)
            warnings.warn(f"{msg}; they are excluded from the NCM index", stacklevel=2)
        means, ids = self.accumulator.present_means()
        self._index = NearestMeanIndex(
            means, class_ids=ids, metric=self.metric, **self.index_options
        )
        return self._index

    def means(self) -> Tensor:
        """``(C, d)`` class means (NaN rows for empty classes)."""
        return self.accumulator.means()

    def predict(self, features: Tensor) -> Tensor:
        """Class id of the nearest mean for each row of ``features`` (CPU int64)."""
        return self.build().search(features)

    def accuracy(self, features: Tensor, labels: Tensor) -> float:
        """Fraction of rows whose nearest mean is their label."""
        check_labels(labels, features.shape[0], self.num_classes)
        return float((self.predict(features) == labels.cpu()).double().mean())
