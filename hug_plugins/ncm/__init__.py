"""Scalable, exact nearest-class-mean (NCM) classification and the NC4 check.

NC4 (Papyan, Han & Donoho, 2020) says that in the terminal phase of training the classifier
decides like the nearest-class-mean rule ``argmin_c ||x - mu_c||``. Checking it on real data
means NCM classification of millions of queries against up to a million class means. This
module provides:

* :class:`ClassMeanAccumulator`: streaming class sums and counts (``index_add_`` per batch,
  O(C * d) memory); empty classes are reported, never turned into a zero mean.
* :class:`NearestMeanIndex`: exact (or, on request, approximate) nearest-mean search backed by
  FAISS (GPU flat index when ``faiss.get_num_gpus() > 0``, sharded over all GPUs when there are
  several) or by chunked torch matmul; on the CPU the faster of the two is picked by a one-time
  calibration (see :func:`select_cpu_backend`).
* :class:`NCMClassifier`: accumulator + index.
* :class:`NC4Meter` and :func:`nc4_report`: agreement between the model's decision (linear
  argmax, or nearest proxy for HUG) and NCM, and the accuracy of each, in one pass over the data.

Exactness guarantee:
    The float32 search (FAISS or torch) returns the best two candidates per query. A standard
    forward error bound for a length-``d`` float32 dot product, ``|err| <= gamma_(d+8) *
    (||q|| + max_c ||mu_c||)^2`` with ``gamma_n = n u / (1 - n u)`` and ``u = 2^-24`` (for the
    cosine metric ``|err| <= gamma_(2d+16)``), times a safety factor of 2, bounds the error of
    every float32 score. A query whose float32 margin between its two best classes exceeds twice
    that bound is certified: no other class can be nearer in exact arithmetic. Every other
    query is re-checked: all classes within the bound of its float32 best are re-scored in
    float64 with the direct formula ``sum((x - mu)^2)`` (cosine: ``<x, mu> / (||x|| ||mu||)``),
    exact ties going to the lowest class id. The result therefore equals the float64
    brute-force rule :func:`ncm_reference` (0 disagreements, near ties included); the bound holds
    for any summation order, so it covers blocked BLAS, FMA and GPU GEMMs. On CUDA, torch
    matmuls that allow TF32/bf16 (``torch.get_float32_matmul_precision() != "highest"``) are
    bounded with the matching larger unit roundoff; FAISS GPU flat indexes use FP32 cuBLAS
    GEMMs (``NVIDIA_TF32_OVERRIDE=1`` is honoured by switching to the TF32 unit). The re-check
    uses the means as stored: with ``accum_dtype=torch.float64`` these are the float64 means,
    so the whole pipeline equals the float64 reference computed from the raw features; with the
    default float32 accumulation it is exact for the float32 means.

Reference:
    Papyan, Han, Donoho. "Prevalence of neural collapse during the terminal phase of deep
    learning training." PNAS 2020. https://doi.org/10.1073/pnas.2015509117
    Liu, Yu, Weller, Schölkopf. "Generalizing and Decoupling Neural Collapse via Hyperspherical
    Uniformity Gap." ICLR 2023. https://arxiv.org/abs/2303.06484
    Johnson, Douze, Jégou. "Billion-scale similarity search with GPUs." IEEE TBD 2019.

Example:
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
