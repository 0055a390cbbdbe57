"""Tests of HUGCriterion, the self-supervised (lightly-style) HUG loss."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from hug_plugins import HUGCriterion
from hug_plugins.losses import ClassMeanHUGLoss


def naive_hug(views: Tensor, s: float, alpha: float, beta: float) -> Tensor:
    """Per-instance MHE-HUG written with explicit loops: views (B, k, d)."""
    x = F.normalize(views, dim=2)
    means = F.normalize(x.mean(1), dim=1)
    pairs = [
        torch.linalg.vector_norm(means[i] - means[j]) ** -s
        for i, j in itertools.permutations(range(means.shape[0]), 2)
    ]
    inter = torch.stack(pairs).mean()
    pulls = [
        torch.linalg.vector_norm(x[i, v] - means[i].detach())
        for i in range(x.shape[0])
        for v in range(x.shape[1])
    ]
    intra = torch.stack(pulls).mean()
    return alpha * inter + beta * intra


def _grads(loss: Tensor, *inputs: Tensor) -> tuple[Tensor, ...]:
    return torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize(("s", "num_views"), [(1.0, 2), (2.0, 3)])
def test_matches_naive_formula_and_gradients(s: float, num_views: int) -> None:
    views = torch.randn(7, num_views, 5, dtype=torch.float64, requires_grad=True)
    criterion = HUGCriterion(alpha=0.7, beta=1.3, kernel="riesz", s=s)
    loss = criterion(views)
    reference = naive_hug(views, s, 0.7, 1.3)
    torch.testing.assert_close(loss, reference, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(_grads(loss, views), _grads(reference, views))
    assert criterion.last_terms is not None
    torch.testing.assert_close(
        criterion.last_terms.inter + criterion.last_terms.intra, loss.detach()
    )


MEASURES: dict[str, dict[str, str]] = {
    "riesz": {},
    "log": {"kernel": "log"},
    "gaussian": {"kernel": "gaussian"},
    "mhs": {"inter": "mhs"},
    "mgd": {"inter": "mgd"},
}


@pytest.mark.parametrize("uniformity", list(MEASURES))
def test_equals_class_mean_hug_with_instance_labels(uniformity: str) -> None:
    out0 = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    out1 = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    criterion = HUGCriterion(alpha=0.5, beta=2.0, **MEASURES[uniformity])  # type: ignore[arg-type]
    cfg = criterion.config
    reference_fn = ClassMeanHUGLoss(num_classes=9, config=cfg)
    stacked = torch.stack([out0, out1], dim=1).reshape(18, 6)
    instance = torch.arange(9).repeat_interleave(2)
    loss = criterion(out0, out1)
    reference = reference_fn(stacked, instance)
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(_grads(loss, out0, out1), _grads(reference, out0, out1))


def test_view_formats_agree() -> None:
    out0, out1 = torch.randn(6, 4), torch.randn(6, 4)
    criterion = HUGCriterion()
    pair = criterion(out0, out1)
    torch.testing.assert_close(criterion([out0, out1]), pair)
    torch.testing.assert_close(criterion((out0, out1)), pair)
    torch.testing.assert_close(criterion(torch.stack([out0, out1], dim=1)), pair)
    assert torch.isfinite(criterion([out0, out1, torch.randn(6, 4)]))


def test_labels_group_instances_into_classes() -> None:
    views = torch.randn(8, 3, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([42, 7, 42, 3, 7, 7, 100, 3])  # arbitrary, non-contiguous values
    criterion = HUGCriterion(alpha=1.0, beta=0.5, s=2.0)
    loss = criterion(views, labels=labels)
    remapped = torch.tensor([0, 1, 0, 2, 1, 1, 3, 2]).repeat_interleave(3)
    reference_fn = ClassMeanHUGLoss(num_classes=4, config=criterion.config)
    reference = reference_fn(views.reshape(24, 5), remapped)
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(_grads(loss, views), _grads(reference, views))
    # distinct labels are the per-instance loss
    torch.testing.assert_close(criterion(views, labels=torch.arange(8) * 3), criterion(views))


def test_memory_bank_negatives_enter_inter_term_as_constants() -> None:
    torch.manual_seed(0)
    dim, bank_size = 4, 10
    criterion = HUGCriterion(alpha=1.0, beta=0.0, s=1.0, memory_bank_size=(bank_size, dim))
    bank_before = criterion.memory_bank.bank.clone()
    out0 = torch.randn(5, dim, requires_grad=True)
    out1 = torch.randn(5, dim, requires_grad=True)
    loss = criterion(out0, out1)
    # reference: mean over i in batch, j in batch + bank, j != i, of ||m_i - p_j||^-1
    means = F.normalize(F.normalize(out0, dim=1) + F.normalize(out1, dim=1), dim=1)
    points = torch.cat([means, bank_before])
    dist = torch.cdist(means, points)
    mask = torch.ones_like(dist, dtype=torch.bool)
    mask[torch.arange(5), torch.arange(5)] = False
    reference = dist[mask].pow(-1.0).mean()
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(_grads(loss, out0, out1), _grads(reference, out0, out1))
    # the bank now holds the batch means (detached), queued at the front
    torch.testing.assert_close(criterion.memory_bank.bank[:5], means.detach())
    torch.testing.assert_close(criterion.memory_bank.bank[5:], bank_before[5:])
    # no update without gradients (as lightly's losses)
    snapshot = criterion.memory_bank.bank.clone()
    criterion(out0.detach(), out1.detach())
    assert torch.equal(criterion.memory_bank.bank, snapshot)


def test_memory_bank_mhs_runs_and_pushes_apart() -> None:
    criterion = HUGCriterion(inter="mhs", memory_bank_size=(16, 3))
    past = torch.nn.functional.normalize(torch.randn(4, 3), dim=1).requires_grad_(True)
    criterion(past, past)  # fills the bank with these instances (inputs require grad)
    current = torch.nn.functional.normalize(torch.randn(4, 3), dim=1)
    current[0] = torch.nn.functional.normalize(past[0].detach() + 0.02 * torch.randn(3), dim=0)
    out0 = current.clone().requires_grad_(True)
    with_bank = criterion(out0, out0)
    with_bank.backward()
    # the bank entry at distance ~0.02 is the nearest pair: it dominates the separation term
    assert float(with_bank) > float(HUGCriterion(inter="mhs")(current, current)) + 0.1
    assert out0.grad is not None and torch.isfinite(out0.grad).all()
    stepped = torch.nn.functional.normalize(out0.detach() - 1e-3 * out0.grad, dim=1)
    before = float((current[0] - past[0].detach()).norm())
    after = float((stepped[0] - past[0].detach()).norm())
    assert after > before  # the nearest pair is a batch-bank pair: the step widens it


def test_memory_bank_errors() -> None:
    with pytest.raises(ValueError, match="dim"):
        HUGCriterion(memory_bank_size=128)  # lightly 1.6 requires (num, dim)
    with pytest.raises(ValueError, match="mgd"):
        HUGCriterion(inter="mgd", memory_bank_size=(8, 4))
    criterion = HUGCriterion(memory_bank_size=(8, 4))
    with pytest.raises(ValueError, match="feature dimension"):
        criterion(torch.randn(4, 5), torch.randn(4, 5))
    with pytest.raises(ValueError, match="labels"):
        criterion(torch.randn(4, 4), torch.randn(4, 4), labels=torch.arange(4))


def test_fp32_under_autocast() -> None:
    out0 = torch.randn(16, 8).to(torch.bfloat16)
    out1 = torch.randn(16, 8).to(torch.bfloat16)
    criterion = HUGCriterion(s=2.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = criterion(out0, out1)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, criterion(out0.float(), out1.float()))


def test_collapsed_views_give_finite_loss_and_gradients() -> None:
    out0 = torch.ones(6, 4, requires_grad=True)
    loss = HUGCriterion(s=2.0)(out0, out0.detach().clone())
    loss.backward()
    assert torch.isfinite(loss) and loss > 1e3  # full collapse is penalized, not ignored
    assert out0.grad is not None and torch.isfinite(out0.grad).all()


def test_optimizing_embeddings_aligns_views_and_spreads_instances() -> None:
    base = torch.randn(32, 8)
    noise = torch.randn(32, 2, 8)
    emb = torch.nn.Parameter(0.1 * base[:, None, :] + noise)  # views barely agree
    criterion = HUGCriterion()
    optimizer = torch.optim.Adam([emb], lr=0.05)
    criterion(emb)
    start = criterion.last_terms
    for _ in range(200):
        optimizer.zero_grad()
        criterion(emb).backward()
        optimizer.step()
    end = criterion.last_terms
    assert start is not None and end is not None
    assert end.intra < 0.3 * start.intra
    assert end.inter < start.inter
    cos = F.cosine_similarity(emb[:, 0], emb[:, 1], dim=1)
    assert cos.min() > 0.9


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((torch.randn(4, 3), torch.randn(5, 3)), "same shape"),
        ((torch.randn(4, 3), torch.randn(4, 3, 1)), "shape"),
        ((torch.randn(4, 3),), "num_views"),
        ((torch.randn(4, 1, 3),), "at least 2 views"),
        (([torch.randn(4, 3)],), "at least 2 views"),
        (([torch.randn(4, 3), torch.randn(4, 2)],), "same shape"),
        ((torch.randn(1, 3), torch.randn(1, 3)), "at least 2 instances"),
        ((torch.full((4, 3), float("nan")), torch.randn(4, 3)), "non-finite"),
        ((torch.randn(4, 3), torch.tensor([[1.0, 2.0, float("inf")]] * 4)), "non-finite"),
        ((torch.ones(4, 3, dtype=torch.long), torch.ones(4, 3, dtype=torch.long)), "floating"),
        (("abc",), "out0"),
    ],
)
def test_bad_input_raises_value_error(args: tuple[object, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HUGCriterion()(*args)  # type: ignore[arg-type]


def test_bad_labels_raise_value_error() -> None:
    criterion = HUGCriterion()
    out = torch.randn(4, 3)
    with pytest.raises(ValueError, match="labels"):
        criterion(out, out, labels=torch.arange(3))
    with pytest.raises(ValueError, match="integer"):
        criterion(out, out, labels=torch.zeros(4))
    with pytest.raises(ValueError, match="range"):
        criterion(out, out, labels=torch.tensor([0, -1, 2, 3]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": -1.0}, "alpha"),
        ({"beta": float("nan")}, "beta"),
        ({"inter": "mmd"}, "inter"),
        ({"kernel": "gaussian", "t": 0.0}, "temperature"),
        ({"inter": "mhs", "separation_t": -0.1}, "separation_t"),
        ({"s": float("inf")}, "s must be"),
        ({"s": 40.0}, "overflow"),
        ({"ce_weight": 1.0}, "proxies"),
        ({"energy_mode": "rows"}, "full energy"),
        ({"uniformity": "riesz"}, "unknown HUG argument"),
        ({"intra": "cosine"}, "intra"),
        ({"eps": 0.0}, "eps"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"gather_distributed": 1}, "gather_distributed"),
        ({"memory_bank_size": (-1, 4)}, "memory bank"),
    ],
)
def test_bad_hyperparameters_raise_value_error(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HUGCriterion(**kwargs)  # type: ignore[arg-type]


def test_gather_requires_torch_distributed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"torch\.distributed is not available"):
        HUGCriterion(gather_distributed=True)


def test_gather_without_process_group_is_the_local_loss() -> None:
    out0, out1 = torch.randn(6, 4), torch.randn(6, 4)
    gathered = HUGCriterion(gather_distributed=True)(out0, out1)
    torch.testing.assert_close(gathered, HUGCriterion()(out0, out1))
    with pytest.raises(ValueError, match="at least 2 instances"):
        HUGCriterion(gather_distributed=True)(out0[:1], out1[:1])


def test_drop_in_for_ntxent_in_a_lightly_model() -> None:
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead

    torch.manual_seed(0)
    head = SimCLRProjectionHead(input_dim=6, hidden_dim=16, output_dim=4)
    x0, x1 = torch.randn(8, 6), torch.randn(8, 6)
    for criterion in (NTXentLoss(), HUGCriterion()):  # same call, same arguments
        loss = criterion(head(x0), head(x1))
        loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())


def test_extra_repr_and_chunking_invariance() -> None:
    views = torch.randn(20, 2, 6, dtype=torch.float64)
    small = HUGCriterion(chunk_size=3)(views)
    torch.testing.assert_close(small, HUGCriterion()(views))
    text = repr(HUGCriterion(memory_bank_size=(4, 6)))
    assert "kernel='riesz'" in text and "memory_bank_size=(4, 6)" in text
