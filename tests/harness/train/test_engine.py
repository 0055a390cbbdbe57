"""Tests of harness.train: the shared training/evaluation loop."""

from __future__ import annotations

import math
from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest
import torch
from harness.data import make_blobs_dataset
from harness.objectives import CrossEntropyObjective, HUGObjective
from harness.train import (
    EpochLRSchedule,
    SupervisedLoss,
    Trainer,
    TrainerConfig,
    distributed_info,
    evaluate_classifier,
    evaluate_collapse,
    extract_features,
    is_main_process,
    move_to_device,
    resolve_device,
    seed_everything,
    torch_threads,
    unwrap_model,
)
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

NUM_CLASSES = 3
DIM = 6


class Net(nn.Module):
    """Tiny (features, logits) classifier with dropout, to exercise the RNG restore."""

    def __init__(self, dim: int = DIM, feat: int = 8, classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(dim, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, feat)
        )
        self.head = nn.Linear(feat, classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.body(x)
        return features, self.head(features)


@pytest.fixture(scope="module")
def blobs() -> TensorDataset:
    return make_blobs_dataset(NUM_CLASSES, DIM, n_per_class=30, seed=0, spread=0.6)


def _config(**kwargs: Any) -> TrainerConfig:
    base: dict[str, Any] = {
        "epochs": 2,
        "batch_size": 16,
        "lr": 0.05,
        "seed": 3,
        "device": "cpu",
        "progress": False,
    }
    base.update(kwargs)
    return TrainerConfig(**base)


def _train(data: TensorDataset, **kwargs: Any) -> tuple[Net, list[dict[str, float]]]:
    seed_everything(3)
    model = Net()
    result = Trainer(_config(**kwargs)).fit_classifier(
        model, data, CrossEntropyObjective(), eval_data=data
    )
    return model, result.history


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- config


def test_trainer_config_defaults_and_from_mapping() -> None:
    cfg = TrainerConfig()
    assert cfg.device == "auto" and cfg.checkpoint_path is None and cfg.grad_clip is None
    cfg = TrainerConfig.from_mapping({"epochs": 4, "optimizer": "adamw"}, lr=0.01)
    assert (cfg.epochs, cfg.optimizer, cfg.lr) == (4, "adamw", 0.01)
    assert cfg.to_dict()["epochs"] == 4
    assert TrainerConfig(checkpoint_path=Path("x/ck.pt")).checkpoint_path == "x/ck.pt"  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown TrainerConfig keys \['epoch'\]"):
        TrainerConfig.from_mapping({"epoch": 3})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("epochs", "3"),
        ("batch_size", 0),
        ("optimizer", "rmsprop"),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("momentum", 1.0),
        ("weight_decay", -1.0),
        ("scheduler", "linear"),
        ("warmup_epochs", 5),
        ("gamma", 1.5),
        ("min_lr", 1.0),
        ("seed", -1),
        ("amp", 1),
        ("amp_dtype", "float64"),
        ("checkpoint_path", ""),
        ("num_workers", -1),
        ("eval_every", 0),
        ("grad_clip", 0.0),
        ("progress", "yes"),
    ],
)
def test_trainer_config_rejects_bad_values(field: str, value: object) -> None:
    kwargs: dict[str, Any] = {"epochs": 3, field: value}
    with pytest.raises(ValueError, match=field):
        TrainerConfig(**kwargs)


def test_nesterov_needs_momentum() -> None:
    with pytest.raises(ValueError, match="nesterov"):
        TrainerConfig(nesterov=True, momentum=0.0)


# ----------------------------------------------------------------------------- helpers


def test_resolve_device_and_distributed_defaults() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ValueError, match="invalid device"):
        resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    assert distributed_info() == (0, 1) and is_main_process()


def test_move_to_device_keeps_structure() -> None:
    Pair = namedtuple("Pair", ["x", "y"])
    batch = {"a": [torch.ones(1), (torch.zeros(2), "name")], "p": Pair(torch.ones(1), 3)}
    moved = move_to_device(batch, torch.device("cpu"))
    assert isinstance(moved["p"], Pair) and moved["p"].y == 3
    assert isinstance(moved["a"][1], tuple) and moved["a"][1][1] == "name"
    assert torch.equal(moved["a"][0], torch.ones(1))


def test_seed_everything_is_reproducible() -> None:
    import random

    import numpy as np

    seed_everything(11)
    first = (random.random(), float(np.random.rand()), torch.rand(2))
    seed_everything(11)
    second = (random.random(), float(np.random.rand()), torch.rand(2))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])
    with pytest.raises(ValueError, match="seed"):
        seed_everything(-2)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"scheduler": "none"}, [1.0, 1.0, 1.0, 1.0]),
        ({"scheduler": "step", "step_size": 2, "gamma": 0.5}, [1.0, 1.0, 0.5, 0.5]),
        ({"scheduler": "cosine"}, [1.0, 0.853553, 0.5, 0.146447]),
        ({"scheduler": "cosine", "min_lr": 0.5}, [1.0, 0.926777, 0.75, 0.573223]),
        ({"scheduler": "cosine", "warmup_epochs": 2}, [1 / 3, 2 / 3, 1.0, 0.5]),
    ],
)
def test_epoch_lr_schedule(kwargs: dict[str, Any], expected: list[float]) -> None:
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = EpochLRSchedule(opt, TrainerConfig(epochs=4, lr=1.0, **kwargs))
    lrs = []
    for epoch in range(4):
        sched.set_epoch(epoch)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx(expected, abs=1e-6)
    assert sched.state_dict()["last_epoch"] == 3


# ----------------------------------------------------------------------------- evaluation


class _Identity(nn.Module):
    """Returns the input as logits: the prediction is the arg-max input coordinate."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x * 2, x


def test_evaluate_classifier_counts_exactly() -> None:
    x = torch.eye(3).repeat(4, 1)  # 12 samples, arg-max 0,1,2,0,1,2,...
    y = torch.tensor([0, 1, 2] * 3 + [1, 1, 1])  # the last three: one of them is right
    data = TensorDataset(x, y)
    model = _Identity().train()
    metrics = evaluate_classifier(model, data, batch_size=5, prefix="val_")
    assert metrics == {"val_accuracy": pytest.approx(10 / 12), "val_error": pytest.approx(2 / 12)}
    assert model.training  # mode restored
    loader = DataLoader(data, batch_size=4)
    assert evaluate_classifier(model, loader)["accuracy"] == pytest.approx(10 / 12)
    # a model returning bare logits works too
    assert evaluate_classifier(nn.Identity(), data)["error"] == pytest.approx(2 / 12)


def test_evaluate_classifier_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        evaluate_classifier(_Identity(), TensorDataset(torch.zeros(0, 3), torch.zeros(0).long()))
    with pytest.raises(ValueError, match=r"\(inputs, labels"):
        evaluate_classifier(_Identity(), [torch.zeros(3)])  # type: ignore[arg-type]


def test_extract_features(blobs: TensorDataset) -> None:
    model = Net()
    feats, labels = extract_features(model, blobs, batch_size=7)
    assert feats.shape == (len(blobs), 8) and feats.dtype == torch.float32
    assert torch.equal(labels, blobs.tensors[1])
    model.eval()
    with torch.no_grad():
        reference = model(blobs.tensors[0])[0]
    # Batches of 7 and one batch of all take different BLAS blockings (and, under MKL_CBWR,
    # different kernels): float32 round-off, not an exact match.
    torch.testing.assert_close(feats, reference, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- training


def test_fit_classifier_learns_blobs(blobs: TensorDataset) -> None:
    _, history = _train(blobs, epochs=6, lr=0.1)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["test_accuracy"] > 0.9
    assert history[-1]["test_error"] == pytest.approx(1 - history[-1]["test_accuracy"])
    assert all(math.isfinite(h["loss"]) for h in history)


def test_same_seed_same_result_and_seed_matters(blobs: TensorDataset) -> None:
    model_a, hist_a = _train(blobs)
    model_b, hist_b = _train(blobs)
    assert hist_a == hist_b and _same_weights(model_a, model_b)
    model_c, _ = _train(blobs, seed=4)
    assert not _same_weights(model_a, model_c)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"optimizer": "adam", "lr": 1e-2, "scheduler": "step", "step_size": 1},
        {"optimizer": "adamw", "lr": 1e-2, "weight_decay": 0.01, "warmup_epochs": 1},
        {"nesterov": True, "grad_clip": 0.5, "drop_last": True, "scheduler": "none"},
        {"amp": True},  # bfloat16 autocast on the CPU
        {"shuffle": False, "eval_every": 5},
    ],
)
def test_fit_variants_run(blobs: TensorDataset, kwargs: dict[str, Any]) -> None:
    _, history = _train(blobs, **kwargs)
    assert len(history) == 2 and all(math.isfinite(h["loss"]) for h in history)
    assert "test_accuracy" in history[-1]


def test_eval_every(blobs: TensorDataset) -> None:
    _, history = _train(blobs, epochs=5, eval_every=2)
    assert ["test_accuracy" in h for h in history] == [False, True, False, True, True]


def test_resume_after_interruption_matches_uninterrupted_run(
    blobs: TensorDataset, tmp_path: Path
) -> None:
    straight_model, straight_hist = _train(blobs, epochs=2)

    ckpt = tmp_path / "ck" / "run.pt"
    _, first_hist = _train(blobs, epochs=1, checkpoint_path=str(ckpt))
    assert ckpt.is_file() and len(first_hist) == 1
    assert [p.name for p in ckpt.parent.iterdir()] == ["run.pt"]  # no temp files left

    seed_everything(123)  # a different pre-fit state must not matter
    resumed = Net()
    result = Trainer(_config(epochs=2, checkpoint_path=str(ckpt))).fit_classifier(
        resumed, blobs, CrossEntropyObjective(), eval_data=blobs
    )
    assert result.resumed and result.start_epoch == 1
    assert result.history == straight_hist
    assert _same_weights(resumed, straight_model)

    state = torch.load(ckpt, weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "rng", "history"} <= set(state)
    assert state["epoch"] == 2 and state["history"] == straight_hist


def test_killed_run_relaunched_with_same_config(blobs: TensorDataset, tmp_path: Path) -> None:
    """A run killed mid-way (here: an exception after epoch 2 of 3) resumes to the same end."""
    straight_model, straight_hist = _train(blobs, epochs=3)
    ckpt = tmp_path / "run.pt"

    def kill(epoch: int, entry: Any) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    seed_everything(3)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_config(epochs=3, checkpoint_path=str(ckpt))).fit_classifier(
            Net(), blobs, CrossEntropyObjective(), eval_data=blobs, on_epoch_end=kill
        )
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2
    model, history = _train(blobs, epochs=3, checkpoint_path=str(ckpt))
    assert history == straight_hist and _same_weights(model, straight_model)

    # re-launching a finished run trains nothing and returns the stored history
    again = Net()
    result = Trainer(_config(epochs=3, checkpoint_path=str(ckpt))).fit_classifier(
        again, blobs, CrossEntropyObjective(), eval_data=blobs
    )
    assert result.start_epoch == 3 and result.history == straight_hist
    assert _same_weights(again, straight_model)


def test_checkpoint_mismatch_is_reported(blobs: TensorDataset, tmp_path: Path) -> None:
    ckpt = tmp_path / "run.pt"
    _train(blobs, epochs=1, checkpoint_path=str(ckpt))
    trainer = Trainer(_config(epochs=2, checkpoint_path=str(ckpt)))
    with pytest.raises(ValueError, match="does not match"):
        trainer.fit_classifier(Net(feat=5), blobs, CrossEntropyObjective())
    torch.save({"something": 1}, ckpt)
    with pytest.raises(ValueError, match="not a hug_plugins trainer checkpoint"):
        trainer.fit_classifier(Net(), blobs, CrossEntropyObjective())


def test_generic_loss_fn_with_collate_and_dataloader() -> None:
    """The SSL-style API: any loss_fn(model, batch), custom collate, dict batches."""
    data = make_blobs_dataset(2, 4, n_per_class=12, seed=1)

    def collate(items: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
        x = torch.stack([item[0] for item in items])
        return {"view1": x, "view2": x + 0.01 * torch.randn_like(x)}

    def loss_fn(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        z1 = nn.functional.normalize(model(batch["view1"]), dim=1)
        z2 = nn.functional.normalize(model(batch["view2"]), dim=1)
        return (2 - 2 * (z1 * z2).sum(dim=1)).mean()

    calls: list[int] = []

    def eval_fn(model: nn.Module) -> dict[str, float]:
        assert not model.training
        calls.append(1)
        weight = model.get_parameter("weight")
        return {"norm": float(weight.detach().norm())}

    seed_everything(0)
    model = nn.Linear(4, 3)
    trainer = Trainer(_config(epochs=2, optimizer="adam", lr=1e-2))
    result = trainer.fit(model, data, loss_fn, eval_fn, collate_fn=collate)
    assert len(calls) == 2 and model.training
    assert set(result.final) == {"epoch", "loss", "lr", "norm"}

    loader = DataLoader(data, batch_size=8, collate_fn=collate)
    result = Trainer(_config(epochs=1)).fit(nn.Linear(4, 3), loader, loss_fn)
    assert len(result.history) == 1


def test_loss_fn_parameters_outside_the_model_are_trained(blobs: TensorDataset) -> None:
    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proxies = nn.Parameter(torch.randn(NUM_CLASSES, 8))

    def pull(features: Tensor, labels: Tensor, proxies: Tensor) -> Tensor:
        return (features - proxies[labels]).pow(2).sum(dim=1).mean()

    head = Head()
    before = head.proxies.detach().clone()
    seed_everything(0)
    Trainer(_config(epochs=1)).fit_classifier(Net(), blobs, HUGObjective(pull, head))
    assert not torch.equal(before, head.proxies.detach())


def test_hug_objective_with_library_loss_and_proxy_head(blobs: TensorDataset) -> None:
    from hug_plugins.losses import HUGLoss
    from hug_plugins.proxies import ProxyHead

    class HugNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(DIM, 16), nn.ReLU(), nn.Linear(16, 8))
            self.head = ProxyHead(NUM_CLASSES, 8, mode="learnable")

        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            features = self.body(x)
            return features, self.head(features)

    seed_everything(0)
    model = HugNet()
    before = model.head.proxies.detach().clone()
    result = Trainer(_config(epochs=4, optimizer="adam", lr=1e-2)).fit_classifier(
        model, blobs, HUGObjective(HUGLoss.preset("mhe"), model.head), eval_data=blobs
    )
    assert not torch.equal(before, model.head.proxies.detach())
    assert result.final["test_accuracy"] > 0.8


def test_bad_loss_and_data_are_reported(blobs: TensorDataset) -> None:
    trainer = Trainer(_config(epochs=1))
    with pytest.raises(ValueError, match="scalar"):
        trainer.fit(Net(), blobs, lambda m, b: m(b[0])[1])
    with pytest.raises(FloatingPointError, match="epoch 1"):
        trainer.fit(Net(), blobs, lambda m, b: m(b[0])[1].sum() * float("nan"))
    with pytest.raises(ValueError, match="empty"):
        trainer.fit(Net(), TensorDataset(torch.zeros(0, DIM)), lambda m, b: m(b[0])[1].sum())
    with pytest.raises(ValueError, match="no batches"):
        Trainer(_config(epochs=1, batch_size=1000, drop_last=True)).fit_classifier(
            Net(), blobs, CrossEntropyObjective()
        )
    with pytest.raises(ValueError, match="model must be"):
        trainer.fit("net", blobs, lambda m, b: b)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reserved"):
        trainer.fit(Net(), blobs, SupervisedLoss(CrossEntropyObjective()), lambda m: {"loss": 1.0})


def test_progress_bar_and_unwrap(blobs: TensorDataset, capsys: pytest.CaptureFixture[str]) -> None:
    seed_everything(0)
    model = Net()
    Trainer(_config(epochs=2, progress=True)).fit_classifier(model, blobs, CrossEntropyObjective())
    err = capsys.readouterr().err
    assert "train: 100%" in err and "2/2" in err  # the epoch bar ran to its end
    Trainer(_config(epochs=2, progress=False)).fit_classifier(model, blobs, CrossEntropyObjective())
    assert capsys.readouterr().err == ""  # and is off when asked
    assert unwrap_model(model) is model
    assert unwrap_model(nn.DataParallel(model)) is model


def test_torch_threads_sets_and_restores() -> None:
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):  # restored on an exception too
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
    for bad in (0, -2, True):
        with pytest.raises(ValueError, match="num_threads"), torch_threads(bad):
            pass


class _DirectionsModel(nn.Module):
    """Features = (per-sample norm) * (unit direction of the class); a cosine head on them."""

    def __init__(self, directions: Tensor) -> None:
        super().__init__()
        self.directions = directions

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        norms, labels = x[:, 0:1], x[:, 1].long()
        features = norms * self.directions[labels]
        return features, nn.functional.normalize(features, dim=1) @ self.directions.T


def test_evaluate_collapse_normalize_measures_the_cosine_space() -> None:
    torch.manual_seed(0)
    directions = nn.functional.normalize(torch.randn(3, 5), dim=1)
    labels = torch.arange(3).repeat(20)
    norms = torch.where(labels == 0, 10.0, 1.0) * torch.rand(60).add(0.05)  # unequal norms
    data = TensorDataset(torch.stack([norms, labels.float()], 1), labels)
    model = _DirectionsModel(directions)
    raw = evaluate_collapse(model, data, 3, batch_size=16)
    both = evaluate_collapse(model, data, 3, batch_size=16, spaces=("raw", "unit"))
    # on the sphere every class sits on one point: NC1 = 0 and the NCM rule agrees exactly
    assert both["unit_nc1"] < 1e-8 and both["unit_nc4_mismatch"] == 0.0
    assert raw["nc1"] > 1e-2  # the norm spread counts as within-class variability in raw space
    assert both["unit_model_accuracy"] == raw["model_accuracy"] == 1.0
    assert all(both[k] == v for k, v in raw.items())  # the raw space is unchanged beside it
    only_unit = evaluate_collapse(model, data, 3, batch_size=16, spaces=["unit"])
    assert set(only_unit) == {k for k in both if k.startswith("unit_")}
    with pytest.raises(ValueError, match="spaces"):
        evaluate_collapse(model, data, 3, spaces=("sphere",))
