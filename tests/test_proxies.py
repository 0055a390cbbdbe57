"""Tests of the proxy constructors, the energy minimizer (Theorems 1 and 2) and ProxyHead."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hug_plugins.functional.uniformity import hyperspherical_energy, riesz_energy
from hug_plugins.proxies import (
    ProxyHead,
    cross_polytope,
    minimize_energy,
    optimized_proxies,
    random_proxies,
    simplex_etf,
)


def off_diagonal_cosines(points: torch.Tensor) -> torch.Tensor:
    unit = F.normalize(points.double(), dim=1)
    cos = unit @ unit.T
    return cos[~torch.eye(points.shape[0], dtype=torch.bool)]


@pytest.mark.parametrize(("num_classes", "dim"), [(3, 2), (4, 3), (6, 5), (5, 10), (10, 16)])
@pytest.mark.parametrize(("kernel", "s"), [("riesz", 1.0), ("riesz", 2.0), ("log", 0.0)])
def test_theorem1_minimizer_is_simplex_etf(
    num_classes: int, dim: int, kernel: str, s: float
) -> None:
    result = minimize_energy(num_classes, dim, kernel=kernel, s=s, seed=1)  # type: ignore[arg-type]
    assert result.converged
    gap = off_diagonal_cosines(result.points) + 1.0 / (num_classes - 1)
    assert gap.abs().max() < 1e-3
    etf_energy = hyperspherical_energy(simplex_etf(num_classes, dim).double(), kernel, s=s)  # type: ignore[arg-type]
    assert result.energy == pytest.approx(float(etf_energy), rel=1e-6)


@pytest.mark.parametrize("dim", [2, 3, 4, 5])
@pytest.mark.parametrize("s", [1.0, 2.0])
def test_theorem2_minimizer_reaches_cross_polytope_energy(dim: int, s: float) -> None:
    target = float(riesz_energy(cross_polytope(dim).double(), s=s))
    best = min(minimize_energy(2 * dim, dim, s=s, seed=seed).energy for seed in range(3))
    assert abs(best - target) / target < 1e-4


@pytest.mark.parametrize("dim", [3, 8])
def test_cross_polytope_beats_random_configurations(dim: int) -> None:
    target = float(riesz_energy(cross_polytope(dim), s=1.0))
    for seed in range(20):
        assert target < float(riesz_energy(random_proxies(2 * dim, dim, seed=seed), s=1.0))


def test_simplex_etf_geometry_and_rotation() -> None:
    for c, d in [(2, 1), (5, 4), (5, 32)]:
        w = simplex_etf(c, d, seed=3)
        assert w.shape == (c, d)
        torch.testing.assert_close(w.norm(dim=1), torch.ones(c))
        gap = off_diagonal_cosines(w) + 1.0 / (c - 1)
        assert gap.abs().max() < 1e-6
    with pytest.raises(ValueError, match=r"needs dim >= 4"):
        simplex_etf(5, 3)


def test_cross_polytope_geometry() -> None:
    w = cross_polytope(4, seed=0)
    cos = off_diagonal_cosines(w)
    assert set(torch.round(cos, decimals=6).unique().tolist()) == {-1.0, 0.0}


def test_minimize_energy_is_seeded_and_handles_c_above_2d() -> None:
    a = minimize_energy(12, 3, seed=5)
    b = minimize_energy(12, 3, seed=5)
    torch.testing.assert_close(a.points, b.points)
    assert a.converged
    # 12 points on S^2 under Riesz s=1: the icosahedron is optimal (Thomson problem).
    icosahedron_cos = off_diagonal_cosines(a.points)
    assert icosahedron_cos.min() == pytest.approx(-1.0, abs=1e-4)
    assert float((icosahedron_cos - 5**-0.5).abs().min()) < 1e-4


@pytest.mark.parametrize("mode", ["learnable", "static_random", "static_optimized", "partial"])
def test_proxy_head_modes(mode: str) -> None:
    head = ProxyHead(5, 4, mode=mode, scale=10.0)  # type: ignore[arg-type]
    features = torch.randn(7, 4)
    logits = head(features)
    assert logits.shape == (7, 5)
    assert logits.abs().max() <= 10.0 + 1e-5
    torch.testing.assert_close(head.predict(features), logits.argmax(1))
    trainable = [p for p in head.parameters() if p.requires_grad]
    assert bool(trainable) == (mode in ("learnable", "partial"))
    if mode == "static_optimized":
        gap = off_diagonal_cosines(head.proxies) + 0.25
        assert gap.abs().max() < 1e-5


def test_partial_head_stays_within_radius_of_base() -> None:
    head = ProxyHead(6, 3, mode="partial", partial_radius=0.3)
    torch.testing.assert_close(head.proxies, head.base)
    head(torch.randn(4, 3)).sum().backward()
    assert head.residual.grad is not None and head.residual.grad.abs().sum() > 0  # learns from 0
    head.residual.grad = None
    with torch.no_grad():
        head.residual.normal_(0.0, 100.0)
    assert (head.proxies - head.base).norm(dim=1).max() <= 0.3 + 1e-6
    loss = head(torch.randn(4, 3)).sum()
    loss.backward()
    assert head.residual.grad is not None and head.residual.grad.abs().sum() > 0


def test_proxy_head_state_dict_round_trip() -> None:
    head = ProxyHead(4, 3, mode="learnable", seed=1)
    other = ProxyHead(4, 3, mode="learnable", seed=2)
    other.load_state_dict(head.state_dict())
    torch.testing.assert_close(other.proxies, head.proxies)


def test_proxy_head_bad_arguments() -> None:
    with pytest.raises(ValueError, match="mode"):
        ProxyHead(3, 2, mode="frozen")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scale"):
        ProxyHead(3, 2, scale=0.0)
    with pytest.raises(ValueError, match="num_classes"):
        ProxyHead(1, 2)
    with pytest.raises(ValueError, match="duplicate"):
        ProxyHead(3, 2, init=torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="columns"):
        ProxyHead(3, 2)(torch.randn(4, 3))


def test_optimized_proxies_picks_known_optimum() -> None:
    torch.testing.assert_close(
        off_diagonal_cosines(optimized_proxies(4, 2)).sort().values,
        off_diagonal_cosines(cross_polytope(2)).sort().values,
    )
