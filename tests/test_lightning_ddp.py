"""The Lightly guide's Lightning ``SimCLR`` under ``Trainer(strategy="ddp")`` equals one process.

The python block after the README line "In a Lightning `LightningModule`" is extracted and
executed as is; its ``SimCLR`` (resnet18 + ``SimCLRProjectionHead`` +
``HUGCriterion(gather_distributed=True)``) is trained for two optimizer steps by
``lightning.Trainer(strategy="ddp", accelerator="cpu", devices=2)`` (gloo), 4 samples of
3 x 32 x 32 per rank and step. This file is also the training script: the test runs it in a
subprocess (own session, 127.0.0.1 and a free port, cluster variables removed), where
Lightning's subprocess launcher starts rank 1 by re-running it; each rank saves its initial and
final parameters and the dataset indices of its batches (Lightning's DistributedSampler
shuffles the training set).

The single-process reference starts from the same parameters and makes two steps of the
snippet's own optimizer, each with one ``criterion(z0, z1)`` over the global batch of 8
instances (rank 0's samples, then rank 1's). BatchNorm (resnet18 and the projection head)
normalizes per rank under DDP: torch's ``SyncBatchNorm`` (Lightning's ``sync_batchnorm=True``)
only runs on GPU tensors, so the reference runs the network on each rank's chunk separately,
as DDP does, and the comparison is exact by construction. Both runs use float64
(``precision="64-true"``): two SGD steps of this small-batch network amplify float32 rounding
differences (summation order, thread count) to 1e-5 .. 1e-3. The parameters must agree to
rtol 1e-7 / atol 1e-9 (observed: ~1e-13) and every parameter tensor must have moved by more
than 1e-4. With ``gather_distributed=False`` in the snippet each rank's loss covers only its 4
instances and the parameters differ by ~0.1; a reference whose BatchNorm sees the whole global
batch differs by ~0.3.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parents[1]
README = REPO / "docs" / "guides" / "lightly.md"
MARKER = "In a Lightning `LightningModule`"

WORLD = 2
BATCH = 4  # per rank
STEPS = 2
SIZE = 32  # image side

# Launcher / cluster variables that must not leak from the calling environment into the run.
_CLUSTER_PREFIXES = ("SLURM_", "TORCHELASTIC_", "PL_", "LSB_", "OMPI_", "PMI_", "JSM_")
_CLUSTER_VARS = {
    "RANK",
    "LOCAL_RANK",
    "GROUP_RANK",
    "NODE_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
}


def lightning_snippet(readme: Path = README) -> str:
    """Returns the first ```python block after the README line starting with ``MARKER``."""
    lines = readme.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(MARKER))
    begin = next(i for i in range(start + 1, len(lines)) if lines[i].strip() == "```python")
    end = next(i for i in range(begin + 1, len(lines)) if lines[i].strip() == "```")
    return "\n".join(lines[begin + 1 : end]) + "\n"


def load_simclr() -> type[Any]:
    """Executes the README snippet and returns its ``SimCLR`` class."""
    namespace: dict[str, Any] = {"__name__": "readme_lightning_snippet"}
    exec(compile(lightning_snippet(), f"{README}:{MARKER}", "exec"), namespace)
    simclr: type[Any] = namespace["SimCLR"]
    return simclr


class TwoViews(Dataset[tuple[tuple[Tensor, Tensor], int]]):
    """Fixed random ``((x0, x1), index)`` samples, 3 x 32 x 32."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(1234)
        num = WORLD * BATCH * STEPS
        self.x0 = torch.randn(num, 3, SIZE, SIZE, generator=gen)
        self.x1 = torch.randn(num, 3, SIZE, SIZE, generator=gen)

    def __len__(self) -> int:
        return self.x0.shape[0]

    def __getitem__(self, index: int) -> tuple[tuple[Tensor, Tensor], int]:
        return (self.x0[index], self.x1[index]), index


def _clone(model: nn.Module) -> dict[str, Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def ddp_main(out_dir: Path) -> None:
    """Trains the README ``SimCLR`` with ``strategy="ddp"``; run as a script (both ranks)."""
    import lightning.pytorch as pl

    torch.set_num_threads(1)
    simclr = load_simclr()
    torch.manual_seed(0)
    model = simclr()
    initial = _clone(model)
    seen: list[list[int]] = []

    class RecordBatches(pl.Callback):
        def on_train_batch_start(
            self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
        ) -> None:
            seen.append([int(i) for i in batch[1]])

    trainer = pl.Trainer(
        strategy="ddp",
        accelerator="cpu",
        devices=WORLD,
        max_steps=STEPS,
        precision="64-true",
        callbacks=[RecordBatches()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    # Lightning swaps in a (shuffling, seeded) DistributedSampler; the batches are recorded
    trainer.fit(model, DataLoader(TwoViews(), batch_size=BATCH))
    result = {"initial": initial, "final": _clone(model), "indices": seen}
    path = out_dir / f"rank{trainer.global_rank}.pt"
    torch.save(result, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()  # rank 0 exits only after rank 1 saved


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_ddp(out_dir: Path, timeout: float) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _CLUSTER_VARS and not key.startswith(_CLUSTER_PREFIXES)
    }
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    )
    log_path = out_dir / "ddp.log"
    with log_path.open("wb") as log:
        # own session: on a timeout the launcher and the rank it started are killed together
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), str(out_dir)],
            env=env,
            cwd=out_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    text = log_path.read_text(errors="replace")[-4000:]
    assert code == 0, f"DDP run failed (exit code {code}):\n{text}"
    deadline = time.monotonic() + 30
    while not (out_dir / f"rank{WORLD - 1}.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)


def reference(initial: dict[str, Tensor], indices: list[list[list[int]]]) -> dict[str, Tensor]:
    """One process, same weights and optimizer, one loss over the global batch of each step;
    the network runs per rank chunk so that BatchNorm sees the same samples as under DDP."""
    model = load_simclr()().double()
    model.load_state_dict(initial, strict=False)
    model.train()
    optimizer = model.configure_optimizers()
    data = TwoViews()
    x0, x1 = data.x0.double(), data.x1.double()
    for step in range(STEPS):
        z0 = torch.cat([model(x0[indices[rank][step]]) for rank in range(WORLD)])
        z1 = torch.cat([model(x1[indices[rank][step]]) for rank in range(WORLD)])
        loss = model.criterion(z0, z1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return _clone(model)


@pytest.mark.timeout(400)
def test_readme_simclr_ddp_equals_single_process(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    snippet = lightning_snippet()
    assert "HUGCriterion(gather_distributed=True)" in snippet

    _run_ddp(tmp_path, timeout=300)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD)]
    # Lightning's DistributedSampler shuffles the training set (seeded identically on both
    # ranks): every step the ranks hold disjoint batches of BATCH samples, recorded on the way
    indices = [result["indices"] for result in ranks]
    for rank in range(WORLD):
        assert [len(batch) for batch in indices[rank]] == [BATCH] * STEPS
    used = sorted(i for rank_batches in indices for batch in rank_batches for i in batch)
    assert used == list(range(WORLD * BATCH * STEPS))
    initial = ranks[0]["initial"]
    for name, value in ranks[1]["initial"].items():  # same seed on both ranks
        torch.testing.assert_close(value, initial[name], rtol=0, atol=0)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        want = reference(initial, indices)
    finally:
        torch.set_num_threads(threads)
    for result in ranks:
        got = result["final"]
        assert got.keys() == want.keys()
        for name in want:
            try:
                torch.testing.assert_close(got[name], want[name], rtol=1e-7, atol=1e-9)
            except AssertionError as error:
                raise AssertionError(f"{name}: {error}") from None
    # the steps moved every parameter tensor far beyond the tolerance (the test can fail)
    for name in want:
        assert float((want[name] - initial[name]).abs().max()) > 1e-4, name


if __name__ == "__main__":
    ddp_main(Path(sys.argv[1]))
