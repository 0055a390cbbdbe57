"""The trainer under torch.distributed: 2 CPU processes, gloo backend, DistributedDataParallel."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from harness.data import make_blobs_dataset
from harness.objectives import CrossEntropyObjective
from harness.train import (
    Trainer,
    TrainerConfig,
    distributed_info,
    evaluate_classifier,
    is_main_process,
    seed_everything,
)
from torch import Tensor, nn
from torch.utils.data import DataLoader

WORLD_SIZE = 2

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs the gloo backend"
)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.body(x)
        return features, self.head(features)


def _data() -> tuple[torch.utils.data.Dataset[tuple[Tensor, ...]], ...]:
    # 4 classes x 25 = 100 training samples (50 per rank); 4 x 11 = 44 test samples
    train = make_blobs_dataset(num_classes=4, dim=5, n_per_class=25, seed=0, spread=0.8)
    test = make_blobs_dataset(num_classes=4, dim=5, n_per_class=11, seed=0, spread=0.8)
    return train, test


def _checksum(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        assert distributed_info() == (rank, WORLD_SIZE)
        assert is_main_process() == (rank == 0)
        train, test = _data()
        # different initial weights per rank: DDP must broadcast rank 0's
        seed_everything(100 + rank)
        model = Net()
        config = TrainerConfig(
            epochs=2,
            batch_size=8,
            lr=0.05,
            seed=0,
            device="cpu",
            progress=False,
            checkpoint_path=str(Path(out_dir) / "ckpt.pt"),
        )
        result = Trainer(config).fit_classifier(
            model, train, CrossEntropyObjective(), eval_data=test
        )
        # a plain DataLoader (no DistributedSampler) is refused under DDP
        try:
            Trainer(config).fit_classifier(Net(), DataLoader(train), CrossEntropyObjective())
            refused = False
        except ValueError:
            refused = True
        record = {
            "history": result.history,
            "checksum": _checksum(model),
            "eval_again": evaluate_classifier(model, test),
            "refused_plain_loader": refused,
        }
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()


def test_ddp_two_cpu_processes(tmp_path: Path) -> None:
    mp.spawn(  # type: ignore[attr-defined,no-untyped-call]
        _worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True
    )
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    first, second = records

    # identical global metrics and identical weights on both ranks
    assert first["history"] == second["history"]
    assert first["checksum"] == second["checksum"]
    assert first["eval_again"] == second["eval_again"]
    assert first["refused_plain_loader"] and second["refused_plain_loader"]
    history = first["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert 0.0 <= history[-1]["test_error"] <= 1.0

    # only rank 0 wrote the checkpoint; it holds the same weights, and a single process
    # evaluating them on the whole test set gets exactly the globally reduced DDP numbers
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["ckpt.pt", "rank0.json", "rank1.json"]
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert state["epoch"] == 2 and state["history"] == history
    model = Net()
    model.load_state_dict(state["model"])
    assert _checksum(model) == first["checksum"]
    _, test = _data()
    single = evaluate_classifier(model, test, prefix="test_")
    assert single["test_accuracy"] == pytest.approx(history[-1]["test_accuracy"], abs=1e-12)
