"""Scalable, exact nearest-class-mean (NCM) classification and the NC4 check.

:class:`ClassMeanAccumulator` streams class means (``O(C d)``); :class:`NearestMeanIndex`
searches the nearest mean with FAISS (GPU flat index, sharded over the GPUs, when present) or
chunked torch, the faster CPU backend picked by a one-time calibration; :class:`NCMClassifier`
is both; :class:`NC4Meter` / :func:`nc4_report` give the agreement between a model's decision
and NCM. Results are exact: a float32 top-2 search with a rigorous error bound, and float64
re-scoring of the queries within it (the argument is on the docs' math page).

Reference:
    Papyan, Han, Donoho. "Prevalence of neural collapse during the terminal phase of deep
    learning training." PNAS 2020. Johnson, Douze, Jégou. "Billion-scale similarity search
    with GPUs." IEEE TBD 2019.

Examples:
    >>> import torch
    >>> feats = torch.tensor([[0.0, 0.1], [0.1, 0.0], [5.0, 5.1], [5.1, 5.0]])
    >>> labels = torch.tensor([0, 0, 1, 1])
    >>> ncm = NCMClassifier(num_classes=2, dim=2, backend="torch").fit(feats, labels)
    >>> ncm.predict(torch.tensor([[0.2, 0.2], [4.0, 4.0]])).tolist()
    [0, 1]
"""

from __future__ import annotations

from hug_plugins.ncm.bounds import Approximate, Backend, Metric
from hug_plugins.ncm.classifier import ClassMeanAccumulator, NCMClassifier
from hug_plugins.ncm.faiss_support import (
    faiss_available,
    faiss_num_gpus,
    faiss_openblas_coretype,
    import_faiss,
)
from hug_plugins.ncm.index import NearestMeanIndex, select_cpu_backend
from hug_plugins.ncm.nc4 import NC4Meter, NC4Report, nc4_report
from hug_plugins.ncm.scorer import TorchScorer, ncm_reference

__all__ = [
    "Approximate",
    "Backend",
    "ClassMeanAccumulator",
    "Metric",
    "NC4Meter",
    "NC4Report",
    "NCMClassifier",
    "NearestMeanIndex",
    "TorchScorer",
    "faiss_available",
    "faiss_num_gpus",
    "faiss_openblas_coretype",
    "import_faiss",
    "nc4_report",
    "ncm_reference",
    "select_cpu_backend",
]
