"""Tests of the exact nearest-class-mean evaluator and the NC4 report (hug_plugins.ncm)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from hug_plugins import ncm as ncm_mod
from hug_plugins.metrics import NCMAgreement
from hug_plugins.ncm import (
    ClassMeanAccumulator,
    NC4Meter,
    NCMClassifier,
    NearestMeanIndex,
    nc4_report,
    ncm_reference,
    select_cpu_backend,
)
from hug_plugins.ncm import index as ncm_index

BACKENDS = ["torch", "faiss"] if ncm_mod.faiss_available() else ["torch"]


def brute_force(queries: torch.Tensor, means: torch.Tensor, metric: str = "l2") -> torch.Tensor:
    """Float64 broadcast over all (query, mean) pairs; ties go to the lowest index."""
    q = queries.double()[:, None, :]
    m = means.double()[None, :, :]
    if metric == "l2":
        cost = ((q - m) ** 2).sum(-1)
    else:
        cost = -(q * m).sum(-1) / (q.norm(dim=-1) * m.norm(dim=-1))
    best = cost.min(1, keepdim=True).values
    # lowest index among exact ties
    idx = torch.arange(means.shape[0]).expand_as(cost)
    return torch.where(cost == best, idx, means.shape[0]).min(1).values


def near_tie_problem(
    num_classes: int = 64,
    dim: int = 48,
    n: int = 600,
    offset: float = 3.0,
    seed: int = 0,
    metric: str = "l2",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 means with a common offset, and float32 queries at midpoints of mean pairs.

    Each query sits within ~1e-6 (relative) of the bisector of two means (of their directions
    for cosine), well below what a float32 score can resolve but far above float64 rounding.
    """
    gen = torch.Generator().manual_seed(seed)
    means = (torch.randn(num_classes, dim, generator=gen) + offset).float()
    a = torch.randint(0, num_classes, (n,), generator=gen)
    b = (a + torch.randint(1, num_classes, (n,), generator=gen)) % num_classes
    m64 = means.double()
    if metric == "cosine":
        m64 = m64 / m64.norm(dim=1, keepdim=True)
    mid = (m64[a] + m64[b]) / 2
    jitter = torch.randn(n, dim, generator=gen, dtype=torch.float64) * 1e-6
    return means, (mid + jitter).float()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_exact_matches_float64_bruteforce_random(backend: str, metric: str) -> None:
    gen = torch.Generator().manual_seed(1)
    means = torch.randn(200, 32, generator=gen)
    queries = torch.randn(500, 32, generator=gen) * 2
    index = NearestMeanIndex(means, metric=metric, backend=backend)  # type: ignore[arg-type]
    assert torch.equal(index.search(queries), brute_force(queries, means, metric))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_zero_disagreements_on_near_ties(backend: str, metric: str) -> None:
    means, queries = near_tie_problem(metric=metric)
    ref = brute_force(queries, means, metric)
    index = NearestMeanIndex(means, metric=metric, backend=backend)  # type: ignore[arg-type]
    got = index.search(queries)
    assert int((got != ref).sum()) == 0
    assert index.stats["rechecked"] > 0
    # the problem is a real stress test: plain float32 scoring gets some of these wrong
    q, m = queries, means
    if metric == "cosine":
        q = q / q.norm(dim=1, keepdim=True)
        m = m / m.norm(dim=1, keepdim=True)
        naive = (q @ m.T).argmax(1)
    else:
        naive = ((m * m).sum(1) - 2 * q @ m.T).argmin(1)
    assert int((naive != ref).sum()) > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_ties_go_to_lowest_class_id(backend: str) -> None:
    means = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    queries = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]])
    index = NearestMeanIndex(means, backend=backend)  # type: ignore[arg-type]
    assert index.search(queries).tolist() == [0, 1, 0]


def test_float64_means_give_exact_answer_from_raw_features() -> None:
    means, queries = near_tie_problem(offset=0.0, seed=3)
    means64 = means.double() + 1e-9  # values float32 cannot hold
    queries64 = queries.double()
    index = NearestMeanIndex(means64, backend="torch")
    assert torch.equal(index.search(queries64), brute_force(queries64, means64))


def test_blocked_torch_path_matches_reference() -> None:
    means, queries = near_tie_problem(num_classes=3000, dim=16, n=300, seed=4)
    index = NearestMeanIndex(means, backend="torch", block_bytes=20_000, query_chunk=70)
    assert torch.equal(index.search(queries), brute_force(queries, means))
    assert torch.equal(
        ncm_reference(queries, means, block_bytes=20_000), brute_force(queries, means)
    )


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_ncm_reference_equals_bruteforce(metric: str) -> None:
    means, queries = near_tie_problem(seed=5, metric=metric)
    assert torch.equal(
        ncm_reference(queries, means, metric),  # type: ignore[arg-type]
        brute_force(queries, means, metric),
    )


def test_single_class() -> None:
    index = NearestMeanIndex(torch.ones(1, 4), class_ids=torch.tensor([7]), backend=BACKENDS[-1])
    assert index.search(torch.randn(5, 4)).tolist() == [7] * 5


# ------------------------------------------------------------------------------------------
# streaming means
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_streaming_means_equal_batch_means(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(2)
    feats = torch.randn(1000, 8, generator=gen) + 5
    labels = torch.randint(0, 10, (1000,), generator=gen)
    acc = ClassMeanAccumulator(10, 8, dtype=dtype)
    for chunk in range(0, 1000, 77):
        acc.update(feats[chunk : chunk + 77], labels[chunk : chunk + 77])
    batch = torch.stack([feats[labels == c].double().mean(0) for c in range(10)])
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(acc.means().double(), batch, rtol=tol, atol=tol)
    assert acc.counts.tolist() == torch.bincount(labels, minlength=10).tolist()
    other = ClassMeanAccumulator(10, 8, dtype=dtype)
    other.update(feats, labels)
    acc.merge(other)
    torch.testing.assert_close(acc.means().double(), batch, rtol=tol, atol=tol)


def test_fit_loader_equals_fit() -> None:
    gen = torch.Generator().manual_seed(3)
    feats = torch.randn(300, 6, generator=gen)
    labels = torch.arange(300) % 5
    loader = DataLoader(TensorDataset(feats, labels), batch_size=64)
    a = NCMClassifier(5, 6, accum_dtype=torch.float64, backend="torch").fit_loader(loader)
    b = NCMClassifier(5, 6, accum_dtype=torch.float64, backend="torch").fit(feats, labels)
    torch.testing.assert_close(a.means(), b.means(), rtol=1e-12, atol=1e-12)


def test_empty_classes_are_excluded_not_zero() -> None:
    # class 1 has no sample; a zero mean would win the query at the origin
    feats = torch.tensor([[5.0, 5.0], [-5.0, 5.0]])
    clf = NCMClassifier(3, 2, backend="torch").fit(feats, torch.tensor([0, 2]))
    assert torch.isnan(clf.means()[1]).all()
    with pytest.warns(UserWarning, match="1 of 3 classes have no samples"):
        pred = clf.predict(torch.zeros(4, 2))
    assert set(pred.tolist()) <= {0, 2}
    strict = NCMClassifier(3, 2, on_empty="raise", backend="torch").fit(feats, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="no samples"):
        strict.predict(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="no class has any sample"):
        ClassMeanAccumulator(2, 2).present_means()


def test_bad_input_raises_named_value_error() -> None:
    acc = ClassMeanAccumulator(3, 4)
    with pytest.raises(ValueError, match="4 columns"):
        acc.update(torch.randn(5, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="out of range"):
        acc.update(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="entries but there are"):
        acc.update(torch.randn(2, 4), torch.tensor([0]))
    with pytest.raises(ValueError, match="non-finite"):
        acc.update(torch.tensor([[0.0, 1.0, float("nan"), 0.0]]), torch.tensor([0]))
    index = NearestMeanIndex(torch.eye(4), backend="torch")
    with pytest.raises(ValueError, match="4 columns"):
        index.search(torch.randn(2, 3))
    with pytest.raises(ValueError, match="non-finite"):
        index.search(torch.full((1, 4), float("inf")))
    with pytest.raises(ValueError, match="zero-norm"):
        NearestMeanIndex(torch.eye(4), metric="cosine", backend="torch").search(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="metric"):
        NearestMeanIndex(torch.eye(4), metric="dot")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="strictly increasing"):
        NearestMeanIndex(torch.eye(2), class_ids=torch.tensor([1, 0]))


# ------------------------------------------------------------------------------------------
# NC4
# ------------------------------------------------------------------------------------------


def collapsed_problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    num_classes, dim = 10, 16
    centers = torch.linalg.qr(torch.randn(dim, num_classes, generator=gen))[0].T * 3
    labels = torch.arange(400) % num_classes
    feats = centers[labels] + 1e-3 * torch.randn(400, dim, generator=gen)
    return centers, feats, labels


def test_nc4_is_one_on_collapsed_features() -> None:
    centers, feats, labels = collapsed_problem()
    clf = NCMClassifier(10, 16).fit(feats, labels)
    meter = NC4Meter(clf)
    meter.update(feats, labels, logits=feats @ centers.T)
    report = meter.compute()
    assert report.agreement == 1.0
    assert report.mismatch == 0.0
    assert report.model_accuracy == 1.0 and report.ncm_accuracy == 1.0
    assert report.num_samples == 400


def test_nc4_report_one_pass_with_model_and_loader() -> None:
    centers, feats, labels = collapsed_problem(seed=1)
    head = torch.nn.Linear(16, 10, bias=False)
    with torch.no_grad():
        head.weight.copy_(centers)

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = head

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, self.head(x)

    model = Model()
    model.train()
    loader = DataLoader(TensorDataset(feats, labels), batch_size=50)
    fitted = NCMClassifier(10, 16).fit_loader(loader, model)
    report = nc4_report(model, loader, fitted)
    assert (report.agreement, report.model_accuracy, report.ncm_accuracy) == (1.0, 1.0, 1.0)
    assert model.training  # mode restored
    # means built inside (two passes), and nearest-proxy decisions (HUG)
    assert nc4_report(model, loader, backend="torch").agreement == 1.0
    assert nc4_report(model, loader, fitted, proxies=centers).agreement == 1.0
    # a wrong classifier disagrees with NCM
    rolled = nc4_report(lambda x: (x, head(x).roll(1, dims=1)), loader, fitted)
    assert rolled.agreement == 0.0 and rolled.model_accuracy == 0.0


def test_nc4_meter_counts_partial_agreement() -> None:
    clf = NCMClassifier(2, 2, backend="torch").fit(torch.eye(2), torch.tensor([0, 1]))
    meter = NC4Meter(clf)
    meter.update(torch.eye(2), torch.tensor([0, 1]), decisions=torch.tensor([0, 0]))
    report = meter.compute()
    assert (report.agreement, report.model_accuracy, report.ncm_accuracy) == (0.5, 0.5, 1.0)
    with pytest.raises(ValueError, match="logits or decisions"):
        meter.update(torch.eye(2), torch.tensor([0, 1]))


# ------------------------------------------------------------------------------------------
# backends
# ------------------------------------------------------------------------------------------


def test_cpu_fallback_without_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ncm_index, "faiss_num_gpus", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    index = NearestMeanIndex(torch.randn(50, 8))
    assert index.device == "cpu"
    assert index.backend in BACKENDS
    assert NearestMeanIndex(torch.randn(50, 8), use_gpu=False).device == "cpu"
    with pytest.raises(ValueError, match="use_gpu=True"):
        NearestMeanIndex(torch.randn(5, 8), use_gpu=True)


@pytest.mark.skipif("faiss" not in BACKENDS, reason="faiss not installed")
@pytest.mark.parametrize("num_gpus", [1, 2])
def test_gpu_path_wiring(monkeypatch: pytest.MonkeyPatch, num_gpus: int) -> None:
    """The GPU / sharded branches are taken only when FAISS reports GPUs (faked here)."""
    faiss: Any = ncm_mod.import_faiss()
    calls: dict[str, Any] = {}

    class FakeOptions:
        shard = False

    def to_gpu(res: Any, device: int, index: Any) -> Any:
        calls["single"] = device
        return index

    def to_all(index: Any, co: Any = None) -> Any:
        calls["shard"] = co.shard
        return index

    monkeypatch.setattr(ncm_index, "faiss_num_gpus", lambda: num_gpus)
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: object(), raising=False)
    monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", FakeOptions, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", to_gpu, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", to_all, raising=False)
    means, queries = near_tie_problem(seed=6)
    index = NearestMeanIndex(means)
    assert index.backend == "faiss"
    if num_gpus == 1:
        assert index.device == "gpu" and calls == {"single": 0}
    else:
        assert index.device == "gpu-sharded:2" and calls == {"shard": True}
    assert torch.equal(index.search(queries), brute_force(queries, means))


def test_backend_calibration_is_cached() -> None:
    first = select_cpu_backend(24, 100)
    assert first[0] in BACKENDS
    assert select_cpu_backend(24, 100) == first


@pytest.mark.skipif("faiss" not in BACKENDS, reason="faiss not installed")
@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_reports_recall(kind: str) -> None:
    gen = torch.Generator().manual_seed(7)
    means = torch.randn(2000, 16, generator=gen)
    queries = means[:300] + 0.05 * torch.randn(300, 16, generator=gen)
    index = NearestMeanIndex(means, approximate=kind, nprobe=8)  # type: ignore[arg-type]
    recall = index.estimate_recall(queries)
    assert 0.5 <= recall <= 1.0 and index.recall == recall
    assert index.describe()["mode"] == kind
    exact = NearestMeanIndex(means, backend="faiss")
    assert exact.estimate_recall(queries) == 1.0


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_single_block_certificate_flags_what_the_top2_test_flags(metric: str) -> None:
    means, queries = near_tie_problem(metric=metric)
    scorer = ncm_mod.TorchScorer(means, means, metric)
    assert scorer.single_block(queries.shape[0])  # the CPU path under test
    idx1, unsure = scorer.top1_certified(queries)
    q = scorer.prepare(queries)
    cost1, top_idx, cost2 = scorer.top2(q)
    top2_unsure = (cost2.double() - cost1.double()) <= 2.0 * scorer.tolerance(q)
    # conservative: every row the top-2 test flags is flagged, and certified rows agree
    assert bool((unsure | ~top2_unsure).all())
    assert torch.equal(idx1[~unsure], top_idx[~unsure])
    assert int(unsure.sum()) <= int(top2_unsure.sum()) + 5  # and hardly any extra row
    assert torch.equal(scorer.search(queries), brute_force(queries, means, metric))
    # Settled from the mask's candidates: exact, and the same as the separate re-check.
    settled, _ = scorer.top1_certified(queries, resolve=True)
    assert torch.equal(settled, brute_force(queries, means, metric))
    assert torch.equal(settled[unsure], scorer.recheck(queries[unsure]))


def test_l2_centring_only_where_it_shrinks_the_bound() -> None:
    gen = torch.Generator().manual_seed(0)
    spread = torch.randn(50, 16, generator=gen)
    assert ncm_mod.TorchScorer(spread, spread, "l2").center is None  # means around 0
    offset = spread + 20.0  # ReLU-like common offset: centring shrinks the norms ~5x
    scorer = ncm_mod.TorchScorer(offset, offset, "l2")
    assert scorer.center is not None
    queries = offset[:10] + 0.1 * torch.randn(10, 16, generator=gen)
    assert torch.equal(scorer.search(queries), brute_force(queries, offset))


def test_nc4_meter_and_ncm_agreement_count_alike() -> None:
    gen = torch.Generator().manual_seed(3)
    means = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 6, (200,), generator=gen)
    feats = means[labels] + 0.8 * torch.randn(200, 5, generator=gen, dtype=torch.float64)
    decisions = torch.randint(0, 6, (200,), generator=gen)
    clf = NCMClassifier(6, 5, backend="torch").fit(means, torch.arange(6))
    meter = NC4Meter(clf)
    meter.update(feats, labels, decisions=decisions)
    dense = NCMAgreement(means)
    dense.update(feats, labels, decisions)
    report, out = meter.compute(), dense.compute()
    assert report.agreement == pytest.approx(float(out["nc4_agreement"]), abs=0)
    assert report.ncm_accuracy == pytest.approx(float(out["ncm_accuracy"]), abs=0)
    assert report.model_accuracy == pytest.approx(float(out["model_accuracy"]), abs=0)
    meter.reset()
    with pytest.raises(ValueError, match="before any update"):
        meter.compute()
    assert meter.counts.means is None  # the exact search needs no dense copy of the means
    with pytest.raises(ValueError, match="without class_means"):
        NCMAgreement(None, num_classes=6, dim=5)
