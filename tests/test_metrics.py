"""Tests of the streaming neural-collapse metrics, including the unconstrained-features model."""

from __future__ import annotations

import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from hug_plugins.functional import neural_collapse
from hug_plugins.functional.uniformity import riesz_energy
from hug_plugins.losses import HUGLoss
from hug_plugins.metrics import NCMAgreement, NeuralCollapseMetrics, reference_energy
from hug_plugins.proxies import cross_polytope, simplex_etf


def naive_nc1(features: torch.Tensor, labels: torch.Tensor) -> float:
    x = features.double()
    classes = labels.unique()
    means = torch.stack([x[labels == c].mean(0) for c in classes])
    global_mean = x.mean(0)
    within = (
        sum(
            (x[labels == c] - means[k]).T @ (x[labels == c] - means[k])
            for k, c in enumerate(classes)
        )
        / x.shape[0]
    )
    centred = means - global_mean
    between = centred.T @ centred / len(classes)
    return float(
        torch.trace(within @ torch.linalg.pinv(between, rtol=1e-6, hermitian=True)) / len(classes)
    )


def test_streaming_equals_one_batch_and_naive_nc1() -> None:
    features = torch.randn(200, 6) + 3 * torch.randn(4, 6).repeat_interleave(50, 0)
    labels = torch.arange(4).repeat_interleave(50)
    perm = torch.randperm(200)
    features, labels = features[perm], labels[perm]
    streaming = NeuralCollapseMetrics(4, 6)
    for chunk in range(0, 200, 37):
        streaming.update(features[chunk : chunk + 37], labels[chunk : chunk + 37])
    single = NeuralCollapseMetrics(4, 6)
    single.update(features, labels)
    a, b = streaming.compute(), single.compute()
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    assert float(a["nc1"]) == pytest.approx(naive_nc1(features, labels), rel=1e-6)


def test_collapsed_simplex_reads_as_perfect_collapse() -> None:
    etf = simplex_etf(5, 8).double() * 2.0 + 1.0  # scaled and shifted: still NC after centring
    labels = torch.arange(5).repeat(10)
    features = etf[labels]
    metric = NeuralCollapseMetrics(5, 8)
    metric.update(features, labels, classifier_weight=etf - 1.0)
    out = metric.compute()
    assert float(out["nc1"]) < 1e-10
    assert float(out["nc2_equinorm_means"]) < 1e-6
    assert float(out["nc2_equiangular_std"]) < 1e-6
    assert float(out["nc2_equiangular_etf"]) < 1e-6
    assert float(out["gnc2_ratio"]) == pytest.approx(1.0, abs=1e-5)
    assert float(out["nc3_dist"]) < 1e-6
    assert float(out["nc3_cos"]) == pytest.approx(1.0, abs=1e-6)


def test_gnc2_for_more_classes_than_dimensions() -> None:
    points = cross_polytope(3).double()  # C = 6 > d + 1 = 4: no simplex ETF exists
    labels = torch.arange(6).repeat(3)
    metric = NeuralCollapseMetrics(6, 3)
    metric.update(points[labels], labels)
    out = metric.compute()
    assert float(out["gnc2_energy"]) == pytest.approx(float(riesz_energy(points, s=1.0)), rel=1e-6)
    assert float(out["gnc2_ratio"]) == pytest.approx(1.0, abs=1e-4)
    random = NeuralCollapseMetrics(6, 3)
    random_points = torch.randn(6, 3)
    random.update(random_points[labels], labels)
    assert float(random.compute()["gnc2_ratio"]) > 1.0


def test_equiangular_std_matches_pairwise_loop() -> None:
    features = torch.randn(7, 4, dtype=torch.float64)
    labels = torch.arange(7)
    metric = NeuralCollapseMetrics(7, 4)
    metric.update(features, labels)
    centred = F.normalize(features - features.mean(0), dim=1)
    cos = (centred @ centred.T)[~torch.eye(7, dtype=torch.bool)]
    out = metric.compute()
    torch.testing.assert_close(out["nc2_equiangular_std"], cos.std(unbiased=False))
    torch.testing.assert_close(out["nc2_equiangular_etf"], (cos + 1 / 6).abs().mean())


def test_state_memory_is_linear_in_classes() -> None:
    metric = NeuralCollapseMetrics(5000, 16)
    shapes = {name: tuple(getattr(metric, name).shape) for name in metric._defaults}
    assert shapes == {
        "class_counts": (5000,),
        "class_centroids": (5000, 16),
        "within_scatter": (16, 16),
        "classifier_weight": (5000, 16),
        "has_classifier_weight": (),
    }


def two_pass_reference(
    features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor
) -> dict[str, float]:
    """Every output of NeuralCollapseMetrics, straight from the definitions (float64, two-pass)."""
    x = features.double()
    classes = labels.unique()
    means = torch.stack([x[labels == c].mean(0) for c in classes])
    global_mean = x.mean(0)
    within = sum(
        (x[labels == c] - means[k]).T @ (x[labels == c] - means[k]) for k, c in enumerate(classes)
    )
    num_classes, dim = len(classes), x.shape[1]
    sigma_w = within / x.shape[0]
    centred = means - global_mean
    sigma_b = centred.T @ centred / num_classes
    pinv = torch.linalg.pinv(sigma_b, rtol=1e-6, hermitian=True)
    unit = F.normalize(centred, dim=1)
    cos = (unit @ unit.T)[~torch.eye(num_classes, dtype=torch.bool)]
    norms = centred.norm(dim=1)
    w = weight.double()[classes]
    energy = float(riesz_energy(unit, s=1.0))
    return {
        "nc1": float(torch.trace(sigma_w @ pinv)) / num_classes,
        "nc2_equinorm_means": float(norms.std(unbiased=False) / norms.mean()),
        "nc2_equiangular_std": float(cos.std(unbiased=False)),
        "nc2_equiangular_etf": float((cos + 1 / (num_classes - 1)).abs().mean()),
        "gnc2_energy": energy,
        "gnc2_ratio": energy / reference_energy(num_classes, dim, "riesz", 1.0),
        "nc2_equinorm_w": float(w.norm(dim=1).std(unbiased=False) / w.norm(dim=1).mean()),
        "nc3_dist": float((w / w.norm() - centred / centred.norm()).norm()),
        "nc3_cos": float(F.cosine_similarity(w, centred, dim=1).mean()),
    }


# Batches of unequal sizes; each draws its labels from its own subset of classes 0-4, so most
# classes are missing from some batches (class 5 of 6 never occurs).
BATCHES = (
    (3, (0, 1)),
    (50, (0, 1, 2, 3, 4)),
    (17, (2,)),
    (1, (4,)),
    (89, (0, 1, 2, 3, 4)),
    (40, (1, 3)),
)


def offset_batches(
    offset: float, noise: float, seed: int, batches: tuple[tuple[int, tuple[int, ...]], ...]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Float64 batches ``offset + centre_y + noise * N(0, I)`` in dimension 6."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    out = []
    for size, allowed in batches:
        pick = torch.randint(0, len(allowed), (size,), generator=gen)
        labels = torch.tensor(allowed)[pick]
        noise_rows = torch.randn(size, 6, generator=gen, dtype=torch.float64)
        out.append((offset + centres[labels] + noise * noise_rows, labels))
    return out


@pytest.mark.parametrize(
    ("offset", "noise"), [(0.0, 1e-4), (10.0, 1e-4), (1000.0, 1e-4), (3.0, 0.5)]
)
def test_matches_two_pass_reference_under_a_large_offset(offset: float, noise: float) -> None:
    # The former one-pass Sigma_W (second moment minus class-mean part) read nc1 1.7e-2 off
    # here at offset 1000 and ~3e-6 off at offset 10 (cancellation of ~offset^2 against a
    # within-class scatter ~1e-8); the merged two-pass states stay within ~3e-11.
    batches = offset_batches(offset, noise, seed=7, batches=BATCHES)
    weight = torch.randn(6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    metric = NeuralCollapseMetrics(6, 6)
    for features, labels in batches:
        metric.update(features, labels, classifier_weight=weight)
    out = metric.compute()
    features = torch.cat([f for f, _ in batches])
    labels = torch.cat([y for _, y in batches])
    expected = two_pass_reference(features, labels, weight)
    assert set(out) == set(expected)
    for key, value in expected.items():
        assert float(out[key]) == pytest.approx(value, rel=1e-8, abs=0.0), key
    means, present = metric.class_means()
    assert present.tolist() == [True] * 5 + [False]
    for c in range(5):
        torch.testing.assert_close(means[c], features[labels == c].mean(0), rtol=0, atol=1e-12)
    assert means[5].abs().max() == 0.0


def test_merge_state_and_forward_equal_one_stream() -> None:
    batches = offset_batches(1000.0, 1e-4, seed=3, batches=BATCHES)
    streamed = NeuralCollapseMetrics(6, 6)
    for features, labels in batches:
        streamed.update(features, labels)
    first, second = NeuralCollapseMetrics(6, 6), NeuralCollapseMetrics(6, 6)
    for k, (features, labels) in enumerate(batches):
        (first if k % 2 else second).update(features, labels)
    first.merge_state(second)
    forwarded = NeuralCollapseMetrics(6, 6)
    for features, labels in batches:
        if labels.unique().numel() >= 2:  # forward also computes the batch's own metrics
            forwarded(features, labels)
        else:
            forwarded.update(features, labels)
    expected = streamed.compute()
    for other in (first.compute(), forwarded.compute()):
        for key, value in expected.items():
            torch.testing.assert_close(other[key], value, rtol=1e-9, atol=1e-15)
    streamed.reset()
    assert float(streamed.class_counts.sum()) == 0.0
    assert float(streamed.within_scatter.abs().sum()) == 0.0


def test_absent_classes_are_ignored() -> None:
    features = torch.randn(30, 3, dtype=torch.float64)
    labels = torch.tensor([0, 2, 4]).repeat(10)
    big = NeuralCollapseMetrics(9, 3, reference_max_classes=0)
    big.update(features, labels)
    small = NeuralCollapseMetrics(3, 3, reference_max_classes=0)
    small.update(features, labels // 2)
    a, b = big.compute(), small.compute()
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_ncm_agreement_and_accuracies() -> None:
    means = torch.eye(3)
    features = torch.tensor([[0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.2, 0.8], [0.6, 0.5, 0.0]])
    labels = torch.tensor([0, 1, 2, 1])
    predictions = torch.tensor([0, 1, 1, 1])
    metric = NCMAgreement(means)
    metric.update(features, labels, predictions)
    out = metric.compute()
    assert float(out["nc4_agreement"]) == pytest.approx(0.5)
    assert float(out["model_accuracy"]) == pytest.approx(0.75)
    assert float(out["ncm_accuracy"]) == pytest.approx(0.75)
    masked = NCMAgreement(means, present=torch.tensor([False, True, True]))
    masked.update(features[:1], labels[:1], torch.tensor([1]))
    assert float(masked.compute()["nc4_agreement"]) == 1.0


def test_bad_metric_inputs() -> None:
    metric = NeuralCollapseMetrics(3, 2)
    with pytest.raises(ValueError, match="2 columns"):
        metric.update(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="out of range"):
        metric.update(torch.randn(4, 2), torch.full((4,), 3))
    with pytest.raises(ValueError, match="non-finite"):
        metric.update(torch.full((4, 2), float("nan")), torch.zeros(4, dtype=torch.long))
    metric.update(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.warns(UserWarning, match="at least 2 classes"):
        out = metric.compute()  # torchmetrics' convention: warn and return NaN
    assert out and all(bool(torch.isnan(value)) for value in out.values())


def test_ncm_agreement_is_exact_under_a_large_offset() -> None:
    gen = torch.Generator().manual_seed(5)
    means = 1e-2 * torch.randn(5, 4, generator=gen, dtype=torch.float64)
    labels = torch.arange(200) % 5
    features = means[labels] + 4e-3 * torch.randn(200, 4, generator=gen, dtype=torch.float64)
    predictions = torch.randint(0, 5, (200,), generator=gen)
    present = torch.tensor([True, True, True, True, False])
    plain = NCMAgreement(means, present)
    plain.update(features, labels, predictions)
    shifted = NCMAgreement(means + 1e6, present)  # ||mu||^2 ~ 4e12: 1 ulp > the gaps of dist^2
    shifted.update(features + 1e6, labels, predictions)
    expected = plain.compute()
    assert 0.0 < float(expected["ncm_accuracy"]) < 1.0
    for key, value in shifted.compute().items():
        assert float(value) == float(expected[key]), key


def train_unconstrained_features(
    num_classes: int, dim: int, per_class: int, steps: int = 600
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Unconstrained-features model: free features and proxies trained with P-HUG."""
    gen = torch.Generator().manual_seed(0)
    features = torch.nn.Parameter(torch.randn(num_classes * per_class, dim, generator=gen))
    proxies = torch.nn.Parameter(torch.randn(num_classes, dim, generator=gen))
    labels = torch.arange(num_classes).repeat(per_class)
    loss_fn = HUGLoss(alpha=1.0, beta=1.0, s=2.0, intra="squared_distance", energy_mode="full")
    optimizer = torch.optim.Adam([features, proxies], lr=0.05)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(features, labels, proxies).backward()
        optimizer.step()
        scheduler.step()
    x_hat = F.normalize(features.detach(), dim=1)
    w_hat = F.normalize(proxies.detach(), dim=1)
    nc = NeuralCollapseMetrics(num_classes, dim)
    nc.update(x_hat, labels, classifier_weight=w_hat)
    out = nc.compute()
    means, present = nc.class_means()
    agreement = NCMAgreement(means, present)
    agreement.update(x_hat, labels, (x_hat @ w_hat.T).argmax(1))
    return out, agreement.compute()


@pytest.mark.parametrize(("num_classes", "dim"), [(5, 8), (10, 3)])
def test_unconstrained_features_model_collapses(num_classes: int, dim: int) -> None:
    nc, nc4 = train_unconstrained_features(num_classes, dim, per_class=8)
    assert float(nc["nc1"]) < 1e-2
    assert float(nc4["nc4_agreement"]) == 1.0
    assert float(nc4["model_accuracy"]) == 1.0
    assert float(nc["gnc2_ratio"]) == pytest.approx(1.0, abs=2e-2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        gen = torch.Generator().manual_seed(123)
        features = torch.randn(40, 5, generator=gen)
        labels = torch.arange(40) % 4
        weight = torch.randn(4, 5, generator=gen)
        metric = NeuralCollapseMetrics(4, 5)
        # The classifier weight reaches one rank only; after the sync every rank uses it.
        metric.update(features[rank::world], labels[rank::world], weight if rank == 0 else None)
        out = metric.compute()
        torch.save({k: v.cpu() for k, v in out.items()}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


# Unequal shards, several unequal batches each, a large common offset; class 2 lives on rank 1
# only, class 5 nowhere.
SHARDS = (
    ((5, (0, 1)), (32, (0, 1, 3, 4)), (1, (3,))),
    ((20, (1, 2)), (1, (4,)), (50, (0, 1, 2, 3, 4)), (13, (2,))),
)


def _ddp_offset_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        metric = NeuralCollapseMetrics(6, 6)
        for features, labels in offset_batches(1000.0, 1e-4, seed=11 + rank, batches=SHARDS[rank]):
            metric.update(features, labels)
        local_counts = metric.class_counts.clone()
        out = {k: v.cpu() for k, v in metric.compute().items()}
        with metric.sync_context():
            means, present = metric.class_means()
        out["means"], out["present"] = means, present
        # compute() and sync_context() restore the local state afterwards
        out["local_restored"] = torch.tensor(bool(torch.equal(metric.class_counts, local_counts)))
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_sync_is_exact_for_unequal_shards_with_a_large_offset() -> None:
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_ddp_offset_worker, args=(2, _free_port(), out_dir), nprocs=2, join=True)
        ranks = [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(2)]
    shards = [offset_batches(1000.0, 1e-4, seed=11 + r, batches=SHARDS[r]) for r in range(2)]
    features = torch.cat([f for shard in shards for f, _ in shard])
    labels = torch.cat([y for shard in shards for _, y in shard])
    single = NeuralCollapseMetrics(6, 6)
    single.update(features, labels)
    expected = single.compute()
    reference = two_pass_reference(features, labels, torch.ones(6, 6))
    assert float(expected["nc1"]) == pytest.approx(reference["nc1"], rel=1e-8, abs=0.0)
    single_means, single_present = single.class_means()
    for out in ranks:
        assert bool(out["local_restored"])
        assert out["present"].tolist() == single_present.tolist() == [True] * 5 + [False]
        torch.testing.assert_close(out["means"], single_means, rtol=0, atol=1e-12)
        for key, value in expected.items():
            torch.testing.assert_close(out[key], value, rtol=1e-9, atol=1e-15)
            assert float(out[key]) == pytest.approx(reference[key], rel=1e-8, abs=0.0), key


def test_metrics_sync_over_two_gloo_processes() -> None:
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_ddp_worker, args=(2, _free_port(), out_dir), nprocs=2, join=True)
        ranks = [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(2)]
    gen = torch.Generator().manual_seed(123)
    features = torch.randn(40, 5, generator=gen)
    single = NeuralCollapseMetrics(4, 5)
    single.update(features, torch.arange(40) % 4, torch.randn(4, 5, generator=gen))
    expected = single.compute()
    assert "nc3_dist" in expected
    for out in ranks:
        assert set(out) == set(expected)
        for key, value in expected.items():
            torch.testing.assert_close(out[key], value)


def test_torchmetrics_usage_pattern_update_compute_reset_log_dict() -> None:
    metric = NeuralCollapseMetrics(3, 4)
    features, labels = torch.randn(30, 4), torch.arange(30) % 3
    metric.update(features, labels, classifier_weight=torch.randn(3, 4))
    out = metric.compute()
    # A flat dict of 0-dim tensors: what LightningModule.log_dict takes.
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in out.values())
    assert {"nc1", "gnc2_ratio", "nc3_dist"} <= set(out)
    metric.reset()  # clears every state, the classifier weight included
    assert all(float(getattr(metric, name).abs().sum()) == 0.0 for name in metric._defaults)
    metric.update(features, labels)
    assert "nc3_dist" not in metric.compute()
    functional = neural_collapse(features, labels, 3, reference_energy=reference_energy(3, 4))
    for key, value in metric.compute().items():
        torch.testing.assert_close(value, functional[key], rtol=1e-12, atol=1e-14)


def test_merge_state_takes_a_state_dict_and_keeps_the_classifier_weight() -> None:
    features, labels = torch.randn(40, 4), torch.arange(40) % 4
    weight = torch.randn(4, 4)
    first, second, whole = (NeuralCollapseMetrics(4, 4) for _ in range(3))
    first.update(features[:15], labels[:15])
    second.update(features[15:], labels[15:], weight)
    whole.update(features, labels, weight)
    first.merge_state(second.metric_state)
    expected = whole.compute()
    merged = first.compute()
    assert set(merged) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(merged[key], value, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="Expected state"):
        first.merge_state({"class_counts": torch.zeros(4)})


def test_plot_draws_the_metrics() -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    metric = NeuralCollapseMetrics(3, 4)
    metric.update(torch.randn(30, 4), torch.arange(30) % 3)
    fig, ax = metric.plot()
    assert fig is not None and ax is not None
