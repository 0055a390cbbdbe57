"""Tests of harness.data: the digits split and the blob generator."""

from __future__ import annotations

import pytest
import torch
from harness.data import load_digits_split, make_blobs_dataset


def test_digits_split_shapes_and_ranges() -> None:
    train, test = load_digits_split(seed=0)
    x_train, y_train = train.tensors
    x_test, y_test = test.tensors
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert x_train.shape[1] == 64 and x_test.shape[1] == 64
    assert len(train) + len(test) == 1797
    assert len(test) == round(0.25 * 1797)
    for x in (x_train, x_test):
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert float(x_train.max()) == 1.0
    assert set(y_train.tolist()) == set(range(10)) == set(y_test.tolist())


def test_digits_split_is_stratified() -> None:
    train, test = load_digits_split(seed=3, test_fraction=0.2)
    train_counts = torch.bincount(train.tensors[1], minlength=10).float()
    test_counts = torch.bincount(test.tensors[1], minlength=10).float()
    ratio = test_counts / (train_counts + test_counts)
    assert torch.all((ratio - 0.2).abs() < 0.02)


def test_digits_split_is_seeded_and_disjoint() -> None:
    a_train, a_test = load_digits_split(seed=1)
    b_train, b_test = load_digits_split(seed=1)
    c_train, _ = load_digits_split(seed=2)
    assert torch.equal(a_train.tensors[0], b_train.tensors[0])
    assert torch.equal(a_test.tensors[1], b_test.tensors[1])
    assert not torch.equal(a_train.tensors[0], c_train.tensors[0])
    train_rows = {tuple(row.tolist()) for row in a_train.tensors[0]}
    test_rows = {tuple(row.tolist()) for row in a_test.tensors[0]}
    # the raw data has a handful of duplicate images; the split itself does not copy rows
    assert len(train_rows & test_rows) <= 5


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 0.001, 0.999])
def test_digits_split_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits_split(seed=0, test_fraction=fraction)


def test_make_blobs_dataset() -> None:
    ds = make_blobs_dataset(num_classes=4, dim=6, n_per_class=10, seed=5, spread=0.0)
    x, y = ds.tensors
    assert x.shape == (40, 6) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == [10, 10, 10, 10]
    # spread 0: every sample sits on its centre, at norm `separation`
    assert torch.allclose(x.norm(dim=1), torch.full((40,), 2.0), atol=1e-5)
    again = make_blobs_dataset(num_classes=4, dim=6, n_per_class=10, seed=5, spread=0.0)
    assert torch.equal(again.tensors[0], x)
    other = make_blobs_dataset(num_classes=4, dim=6, n_per_class=10, seed=6)
    assert not torch.equal(other.tensors[0], x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"dim": -1}, "dim"),
        ({"n_per_class": 1.5}, "n_per_class"),
        ({"spread": -0.1}, "spread"),
        ({"separation": 0.0}, "separation"),
    ],
)
def test_make_blobs_rejects_bad_args(kwargs: dict[str, float], match: str) -> None:
    args: dict[str, float] = {"num_classes": 2, "dim": 2, "n_per_class": 2, "seed": 0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        make_blobs_dataset(**args)  # type: ignore[arg-type]
