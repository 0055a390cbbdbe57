"""NeuralCollapseCallback logs the collapse metrics per epoch, under DDP as in one process.

This file is also the DDP script: the test runs it in a subprocess where Lightning's launcher
starts rank 1 by re-running it (``Trainer(strategy="ddp", accelerator="cpu", devices=2)``,
gloo); each rank saves the metrics the trainer logged.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pytest.importorskip("lightning")

import lightning as L

from hug_plugins import HUGLoss, ProxyHead
from hug_plugins.functional import neural_collapse
from hug_plugins.lightning import NeuralCollapseCallback
from hug_plugins.metrics import reference_energy

NUM_CLASSES, DIM, FEATURES = 4, 8, 6
KEYS = ("nc/nc1", "nc/nc2_equinorm_means", "nc/nc2_equiangular_std", "nc/gnc2_ratio",
        "nc/nc3_dist", "nc/nc4_mismatch")  # fmt: skip


def _data(n: int, seed: int) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(NUM_CLASSES, DIM, generator=torch.Generator().manual_seed(5)) * 2.0
    y = torch.arange(NUM_CLASSES).repeat(n // NUM_CLASSES)
    return TensorDataset(centres[y] + torch.randn(len(y), DIM, generator=gen), y)


class Classifier(L.LightningModule):
    """A backbone, a HUG proxy head and HUGLoss()."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(DIM, 16), nn.ReLU(), nn.Linear(16, FEATURES))
        self.head = ProxyHead(NUM_CLASSES, FEATURES)
        self.loss_fn = HUGLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        features = self.backbone(x)
        self.head(features)  # the callback watches the head
        return self.loss_fn(features, y, self.head.proxies)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _trainer(**kwargs: Any) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, **kwargs,
    )  # fmt: skip


def test_callback_logs_training_and_validation_collapse_and_hug_terms() -> None:
    model = Classifier()
    callbacks = [
        NeuralCollapseCallback(NUM_CLASSES, "head", stage="train", prefix="train_nc"),
        NeuralCollapseCallback(NUM_CLASSES, "head"),
    ]
    trainer = _trainer(max_epochs=2, callbacks=callbacks, num_sanity_val_steps=2)
    train = DataLoader(_data(64, 1), batch_size=16, shuffle=True)
    val = DataLoader(_data(32, 2), batch_size=8)
    trainer.fit(model, train, val)
    logged = trainer.callback_metrics
    for key in KEYS:
        assert math.isfinite(float(logged[key])), key
        assert math.isfinite(float(logged["train_" + key])), key
    assert float(logged["hug/loss"]) > 0 and {"hug/inter", "hug/intra"} <= set(logged)
    # The validation values are those of the functional metrics on the final features.
    model.eval()
    x, y = val.dataset.tensors
    with torch.no_grad():
        features = model.backbone(x)
    want = neural_collapse(
        features, y, NUM_CLASSES, model.head.proxies, reference_energy=reference_energy(4, 6)
    )
    for key in ("nc1", "gnc2_ratio", "nc3_dist"):
        assert float(logged[f"nc/{key}"]) == pytest.approx(float(want[key]), rel=1e-5)


def test_callback_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        NeuralCollapseCallback(1)
    with pytest.raises(ValueError, match="stage"):
        NeuralCollapseCallback(3, stage="test")  # type: ignore[arg-type]


def _validate(devices: int) -> dict[str, float]:
    trainer = _trainer(devices=devices, strategy="ddp" if devices > 1 else "auto",
                       callbacks=[NeuralCollapseCallback(NUM_CLASSES, "head")])  # fmt: skip
    trainer.validate(Classifier(), DataLoader(_data(64, 2), batch_size=8), verbose=False)
    return {key: float(value) for key, value in trainer.callback_metrics.items()}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.timeout(300)
def test_ddp_with_two_processes_logs_the_values_of_one_process(tmp_path: Path) -> None:
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    cluster = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK")
    env = {k: v for k, v in os.environ.items() if k not in cluster and not k.startswith("SLURM_")}
    root = Path(__file__).resolve().parents[1]
    path = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    env.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1", PYTHONPATH=path
    )
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), str(tmp_path)], env=env, cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
    assert proc.returncode == 0, output.decode(errors="replace")[-3000:]
    single = _validate(devices=1)
    assert set(KEYS) <= set(single)
    for rank in range(2):
        ranks = torch.load(tmp_path / f"rank{rank}.pt")
        assert set(ranks) == set(single)
        for key, value in single.items():
            assert ranks[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


if __name__ == "__main__":
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    values = _validate(devices=2)
    torch.save(values, out / f"rank{int(os.environ.get('LOCAL_RANK', '0'))}.pt")
