"""Tests of hug_plugins.functional.uniformity against naive references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hug_plugins.functional.uniformity import (
    energy_rows,
    gaussian_energy,
    gram_log_det,
    hyperspherical_energy,
    log_energy,
    make_kernel,
    min_separation,
    riesz_energy,
    soft_separation,
)


def naive_energy(points: torch.Tensor, kernel: str, s: float = 1.0, t: float = 2.0) -> torch.Tensor:
    v = F.normalize(points.double(), dim=1)
    n = v.shape[0]
    values = []
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            dist = torch.linalg.vector_norm(v[i] - v[j])
            if kernel == "gaussian":
                values.append(torch.exp(-t * dist**2))
            elif kernel == "log" or s == 0:
                values.append(torch.log(1.0 / dist))
            else:
                values.append(math.copysign(1.0, s) * dist ** (-s))
    mean = torch.stack(values).mean()
    return torch.log(mean) if kernel == "gaussian" else mean


@pytest.mark.parametrize(
    ("kernel", "s"),
    [("riesz", 1.0), ("riesz", 2.0), ("riesz", 0.5), ("riesz", -1.0), ("riesz", 0.0), ("log", 0.0)],
)
@pytest.mark.parametrize("chunk_size", [None, 1, 3])
def test_energy_matches_naive_loop(kernel: str, s: float, chunk_size: int | None) -> None:
    points = torch.randn(9, 5, dtype=torch.float64)
    got = hyperspherical_energy(points, kernel, s=s, chunk_size=chunk_size)  # type: ignore[arg-type]
    torch.testing.assert_close(got, naive_energy(points, kernel, s=s))


def test_gaussian_energy_matches_wang_isola_form() -> None:
    points = torch.randn(11, 4, dtype=torch.float64)
    got = gaussian_energy(points, t=2.0, chunk_size=4)
    v = F.normalize(points, dim=1)
    sq = torch.pdist(v).pow(2)  # unordered pairs: same mean as ordered pairs
    torch.testing.assert_close(got, sq.mul(-2.0).exp().mean().log())


def test_named_energies_agree_with_general_function() -> None:
    points = torch.randn(6, 3, dtype=torch.float64)
    torch.testing.assert_close(riesz_energy(points, s=2.0), hyperspherical_energy(points, s=2.0))
    torch.testing.assert_close(riesz_energy(points, s=0.0), log_energy(points))


@pytest.mark.parametrize(
    "fn",
    [
        lambda p: riesz_energy(p, s=1.0, chunk_size=2),
        lambda p: riesz_energy(p, s=-1.5, chunk_size=3),
        lambda p: log_energy(p, chunk_size=4),
        lambda p: gaussian_energy(p, t=1.5, chunk_size=2),
        lambda p: soft_separation(p, t=0.2, chunk_size=2),
        lambda p: gram_log_det(p, gamma=1.0),
        lambda p: energy_rows(p, torch.tensor([0, 2, 2, 4]), s=2.0, chunk_size=3),
        lambda p: hyperspherical_energy(p, weights=torch.linspace(0.1, 1.0, 7).double()),
    ],
)
def test_gradcheck_float64(fn: object) -> None:
    points = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (points,))  # type: ignore[arg-type]


def test_energy_rows_equals_full_energy_when_every_row_once() -> None:
    points = torch.randn(8, 3, dtype=torch.float64)
    rows = torch.arange(8)
    torch.testing.assert_close(energy_rows(points, rows, s=1.0), riesz_energy(points, s=1.0))


def test_energy_rows_weights_count_each_class_once() -> None:
    points = torch.randn(6, 3, dtype=torch.float64)
    rows = torch.tensor([1, 1, 1, 4])
    weights = torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.0], dtype=torch.float64)
    expected = energy_rows(points, torch.tensor([1, 4]), s=2.0)
    torch.testing.assert_close(energy_rows(points, rows, weights, s=2.0), expected)


def test_duplicates_are_penalized_finitely_not_dropped() -> None:
    distinct = torch.eye(3)
    duplicated = torch.stack([distinct[0], distinct[0], distinct[1]])
    duplicated.requires_grad_(True)
    energy = riesz_energy(duplicated, s=2.0)
    energy.backward()
    assert torch.isfinite(energy)
    assert energy > 100 * riesz_energy(distinct, s=2.0)
    assert duplicated.grad is not None and torch.isfinite(duplicated.grad).all()


def test_zero_vectors_give_finite_energy_and_gradient() -> None:
    points = torch.zeros(4, 3, requires_grad=True)
    for fn in (
        lambda p: riesz_energy(p, s=1.0),
        log_energy,
        gaussian_energy,
        soft_separation,
        gram_log_det,
    ):
        value = fn(points)
        (grad,) = torch.autograd.grad(value, points)
        assert torch.isfinite(value) and torch.isfinite(grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_computes_in_float32(dtype: torch.dtype) -> None:
    points = torch.randn(16, 8)
    points[1] = points[0]  # a duplicate: 1/d^2 overflows in fp16
    points.requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype):
        energy = riesz_energy(points.to(dtype), s=2.0)
    energy.backward()
    assert energy.dtype == torch.float32
    assert torch.isfinite(energy) and torch.isfinite(points.grad).all()  # type: ignore[arg-type]


def test_min_and_soft_separation() -> None:
    points = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert float(min_separation(points)) == pytest.approx(math.sqrt(2.0), rel=1e-6)
    soft = float(soft_separation(points, t=0.01))
    assert soft <= math.sqrt(2.0) + 1e-6
    assert soft == pytest.approx(math.sqrt(2.0), abs=0.01 * math.log(3) + 1e-6)


def test_gram_log_det_prefers_spread_points() -> None:
    spread = torch.eye(4)
    clumped = F.normalize(torch.eye(4) + 3.0, dim=1)
    assert gram_log_det(spread) > gram_log_det(clumped)


def test_chunked_backward_memory_path_matches_unchunked() -> None:
    points = torch.randn(50, 6, dtype=torch.float64, requires_grad=True)
    (g1,) = torch.autograd.grad(riesz_energy(points, s=1.0, chunk_size=7), points)
    (g2,) = torch.autograd.grad(riesz_energy(points, s=1.0, chunk_size=50), points)
    torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kernel": "cosine"}, "unknown kernel"),
        ({"kernel": "gaussian", "t": 0.0}, "temperature"),
        ({"kernel": "riesz", "s": 20.0}, "overflow"),
        ({"kernel": "riesz", "s": float("nan")}, "finite"),
        ({"kernel": "riesz", "eps": 0.0}, "eps"),
    ],
)
def test_bad_kernel_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_kernel(**kwargs)  # type: ignore[arg-type]


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="shape"):
        riesz_energy(torch.randn(5))
    with pytest.raises(ValueError, match="non-finite"):
        riesz_energy(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="at least 2"):
        riesz_energy(torch.randn(1, 3))
    with pytest.raises(ValueError, match="floating"):
        riesz_energy(torch.ones(3, 2, dtype=torch.long))


@pytest.mark.parametrize("kernel", ["riesz", "log", "gaussian"])
def test_recompute_path_matches_cached_path(kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import hug_plugins.functional.pair_sums as pair_sums

    points = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    weights = torch.linspace(0.2, 1.0, 9).double()

    def energy(p: torch.Tensor) -> torch.Tensor:
        return hyperspherical_energy(p, kernel, s=1.5, weights=weights, chunk_size=4)  # type: ignore[arg-type]

    (cached,) = torch.autograd.grad(energy(points), points)
    monkeypatch.setattr(pair_sums, "MAX_HELD_PAIRS", 0)
    (recomputed,) = torch.autograd.grad(energy(points), points)
    torch.testing.assert_close(cached, recomputed)
    assert torch.autograd.gradcheck(energy, (points,))
