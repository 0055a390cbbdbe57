"""SimCLR-style self-supervised benchmark: HUGCriterion vs NTXentLoss vs HypersphereLoss.

Every criterion trains the same backbone and lightly ``SimCLRProjectionHead`` with the same
epochs, batch, optimizer, schedule and seeds, through the library's one training loop
(:class:`hug_plugins.train.Trainer`). After training, on the L2-normalized backbone features:

* **kNN top-1** on the test set with the training set as the feature bank (lightly's
  ``knn_predict``, k = 200, t = 0.1, as lightly's benchmarks);
* **GNC2**: ``gnc2_ratio`` of :class:`hug_plugins.NeuralCollapseMetrics` on the training
  features with the true labels: Riesz (s = 1) energy of the normalized centred class means
  divided by the energy of an energy-minimizing configuration (1.0 = perfectly uniform);
* **NC4**: :class:`hug_plugins.NCMAgreement`, the rate at which the kNN decision on a test image
  equals the nearest-class-mean decision (class means of the training features);
* **throughput**: training images per second of each criterion's run (wall time of the
  training loop, evaluation excluded), measured in the same process.

Presets (``configs/ssl/``):

* ``quick``: scikit-learn's embedded 8x8 digits, a small CNN, CPU, a few minutes for 3 seeds.
  Lightly's image transforms expect natural RGB (PIL) images, so the digits get a batched
  tensor augmentation instead (:class:`BatchAugment`: random resized crop + rotation as one
  affine warp, plus Gaussian noise), applied in the DataLoader's ``collate_fn``.
* ``cifar10``: ResNet-18 CIFAR variant (3x3 stem, no max-pool), lightly's
  ``SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)`` as in lightly's
  CIFAR-10 benchmark; ``--data-root`` points to an ImageFolder root (``train/`` and ``test/``
  with one folder per class) or a torchvision CIFAR-10 root. Lightly's published reference:
  SimCLR kNN top-1 0.847 (ResNet-18, 200 epochs, batch 128, GPU).

Output: ``<output>.md`` and ``<output>.csv`` (mean +- std over seeds, with the exact command and
the hardware in the header) and ``<output>_runs.csv`` (one row per criterion and seed).

Usage::

    python integrations/selfsupervised.py --preset quick
    python integrations/selfsupervised.py --preset cifar10 --data-root ../shared/data/cifar10-jpeg
    python integrations/selfsupervised.py --preset quick trainer.epochs=5 seeds=[0] criteria=[hug]

Distributed: ``torchrun --nproc_per_node=N integrations/selfsupervised.py --preset quick`` (gloo
on CPUs, NCCL on GPUs) prints and writes the same tables. ``trainer.batch_size`` is the *global*
batch: each of the N processes trains on ``batch_size / N`` images per step (it must divide) from
its own shard of the training set (the trainer's ``DistributedSampler``), and the model is
wrapped in ``DistributedDataParallel`` (:class:`hug_plugins.train.Trainer`), so the figures are
comparable with a single-process run. ``HUGCriterion`` and ``NTXentLoss`` gather the
projections of all ranks (``gather_distributed=True``) and compute the loss of the global
batch. Lightly's ``HypersphereLoss`` has no gather: each rank computes alignment and
uniformity on its local ``batch_size / N`` images only (fewer negatives than single-process)
and DDP averages the gradients, i.e. it optimizes the mean of the per-rank losses. BatchNorm
statistics are per process (SyncBatchNorm, ``+trainer.sync_batchnorm=true``, needs GPUs). The
digits augmentation draws from a per-rank generator so the ranks' views are independent (the
cifar10 transforms run in DataLoader workers whose seeds the trainer derives from the run's
seed, the same on every rank). Rank 0
alone evaluates (kNN, GNC2, NC4 on the full sets with its weights, which DDP keeps identical on
all ranks) and broadcasts the numbers; rank 0 alone prints and writes the (atomic) files, whose
header records the ``torchrun`` command and the number of processes. Throughput counts the
images of all ranks per second of rank 0's wall time.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.utils.data import Dataset

from hug_plugins.config import parse_cli, to_dict
from hug_plugins.io import standard_header_lines, summarize, write_tables
from hug_plugins.metrics import NCMAgreement, NeuralCollapseMetrics
from hug_plugins.ssl import HUGCriterion
from hug_plugins.train import (
    Trainer,
    TrainerConfig,
    distributed_info,
    init_distributed_from_env,
    is_main_process,
    seed_everything,
)

CRITERIA = ("hug", "ntxent", "hypersphere")
CRITERION_NAMES = {
    "hug": "HUGCriterion",
    "ntxent": "NTXentLoss",
    "hypersphere": "HypersphereLoss",
}

# ----------------------------------------------------------------------------- data


class TwoViewDataset(Dataset[tuple[list[Tensor], int]]):
    """Wraps ``(image, label)`` items: returns ``([view0, view1], label)``."""

    def __init__(self, items: Callable[[int], tuple[Any, int]], length: int, view: Any) -> None:
        self.items = items
        self.length = length
        self.view = view

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[list[Tensor], int]:
        image, label = self.items(index)
        return [self.view(image), self.view(image)], label


class EvalDataset(Dataset[tuple[Any, int]]):
    """``(transform(image), label)`` without augmentation (identity when ``view`` is None)."""

    def __init__(
        self, items: Callable[[int], tuple[Any, int]], length: int, view: Any = None
    ) -> None:
        self.items = items
        self.length = length
        self.view = view

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.items(index)
        return (image if self.view is None else self.view(image)), label


class BatchAugment:
    """Batched tensor augmentation for the 8x8 digits, used as the DataLoader ``collate_fn``.

    Each image of a batch gets two independent views, each a random resized crop (area
    fraction in ``crop_scale``, aspect ratio in [3/4, 4/3]) combined with a random rotation
    (``+-rotation`` degrees), applied as one affine warp (``affine_grid`` + ``grid_sample``,
    bilinear, zero padding), plus Gaussian pixel noise of std ``noise_std``. This is the
    transform torchvision's v2 ``RandomResizedCrop`` + ``RandomRotation`` apply per image,
    done for the whole batch at once: per-image v2 calls cost about 1 ms per 8x8 image on a
    CPU, more than the model itself. Randomness comes from ``generator``, by default (``None``)
    torch's global generator, which the trainer seeds with the same seed on every rank; under
    DDP :meth:`for_rank` gives each rank its own stream.
    """

    def __init__(
        self,
        crop_scale: Sequence[float],
        rotation: float,
        noise_std: float,
        generator: torch.Generator | None = None,
    ) -> None:
        self.scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.rotation = math.radians(float(rotation))
        self.noise_std = float(noise_std)
        self.generator = generator

    def for_rank(self, seed: int, rank: int) -> BatchAugment:
        """A copy drawing from its own generator seeded with ``(seed, rank)``."""
        state = np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint64)[0]
        generator = torch.Generator().manual_seed(int(state) % 2**63)
        return BatchAugment(
            self.scale, math.degrees(self.rotation), self.noise_std, generator=generator
        )

    def view(self, images: Tensor) -> Tensor:
        """One random view of every image of a ``(B, C, H, W)`` batch."""
        n, gen = images.shape[0], self.generator
        area = torch.empty(n).uniform_(*self.scale, generator=gen)
        log_ratio = torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen)
        ratio = torch.exp(log_ratio)
        sx = torch.sqrt(area * ratio).clamp(max=1.0)
        sy = torch.sqrt(area / ratio).clamp(max=1.0)
        tx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sx)
        ty = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sy)
        angle = (torch.rand(n, generator=gen) * 2 - 1) * self.rotation
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack(
            [
                torch.stack([sx * cos, -sy * sin, tx], dim=1),
                torch.stack([sx * sin, sy * cos, ty], dim=1),
            ],
            dim=1,
        )
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        out = F.grid_sample(images, grid, mode="bilinear", align_corners=False)
        noise = torch.randn(out.shape, generator=gen, dtype=out.dtype, device=out.device)
        return out + self.noise_std * noise

    def __call__(self, items: list[tuple[Tensor, int]]) -> tuple[list[Tensor], Tensor]:
        images = torch.stack([image for image, _ in items])
        labels = torch.tensor([label for _, label in items], dtype=torch.long)
        return [self.view(images), self.view(images)], labels


def load_data(cfg: DictConfig) -> tuple[Dataset[Any], Dataset[Any], Dataset[Any], int, Any]:
    """Returns ``(train set, train eval set, test eval set, num_classes, collate_fn)``."""
    data = cfg.data
    if data.name == "digits":
        from hug_plugins.data import load_digits_split

        train, test = load_digits_split(seed=int(data.split_seed), test_fraction=data.test_fraction)
        train_x = train.tensors[0].reshape(-1, 1, 8, 8)
        train_y = train.tensors[1].tolist()
        test_x = test.tensors[0].reshape(-1, 1, 8, 8)
        test_y = test.tensors[1].tolist()

        def train_item(i: int) -> tuple[Tensor, int]:
            return train_x[i], train_y[i]

        def test_item(i: int) -> tuple[Tensor, int]:
            return test_x[i], test_y[i]

        return (
            EvalDataset(train_item, len(train_y)),
            EvalDataset(train_item, len(train_y)),
            EvalDataset(test_item, len(test_y)),
            10,
            BatchAugment(data.crop_scale, data.rotation, data.noise_std),
        )
    if data.name == "cifar10":
        return _load_cifar10(cfg)
    raise ValueError(f"data.name must be 'digits' or 'cifar10', got {data.name!r}")


def _decode_split(root: Path, train: bool, download: bool) -> tuple[np.ndarray, list[int]]:
    """Decodes a CIFAR-10 split into a uint8 ``(N, 32, 32, 3)`` array (kept in memory)."""
    import torchvision

    split = root / ("train" if train else "test")
    if split.is_dir():
        folder = torchvision.datasets.ImageFolder(str(split))
        images = np.stack(
            [np.asarray(folder.loader(path).convert("RGB")) for path, _ in folder.samples]
        )
        return images, [label for _, label in folder.samples]
    dataset = torchvision.datasets.CIFAR10(str(root), train=train, download=download)
    return np.asarray(dataset.data), list(dataset.targets)


def _load_cifar10(
    cfg: DictConfig,
) -> tuple[Dataset[Any], Dataset[Any], Dataset[Any], int, Any]:
    from lightly.transforms.simclr_transform import SimCLRTransform
    from lightly.transforms.utils import IMAGENET_NORMALIZE
    from PIL import Image
    from torchvision import transforms as T

    if cfg.data.root is None:
        raise ValueError("the cifar10 preset needs --data-root (or data.root=PATH)")
    root = Path(str(cfg.data.root))
    train_x, train_y = _decode_split(root, True, bool(cfg.data.download))
    test_x, test_y = _decode_split(root, False, bool(cfg.data.download))
    ssl_view = SimCLRTransform(
        input_size=32,
        cj_strength=0.5,
        gaussian_blur=0.0,
        min_scale=float(cfg.data.crop_scale[0]),
    ).transforms[0]
    plain = T.Compose(
        [
            T.ToTensor(),
            T.Normalize(mean=IMAGENET_NORMALIZE["mean"], std=IMAGENET_NORMALIZE["std"]),
        ]
    )

    def train_item(i: int) -> tuple[Any, int]:
        return Image.fromarray(train_x[i]), train_y[i]

    def test_item(i: int) -> tuple[Any, int]:
        return Image.fromarray(test_x[i]), test_y[i]

    return (
        TwoViewDataset(train_item, len(train_y), ssl_view),
        EvalDataset(train_item, len(train_y), plain),
        EvalDataset(test_item, len(test_y), plain),
        10,
        None,
    )


# ----------------------------------------------------------------------------- model


def digits_cnn(width: int) -> nn.Module:
    """A small CNN for 8x8 grayscale images; output dimension ``4 * width``."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 4 * width, 3, padding=1, bias=False),
        nn.BatchNorm2d(4 * width),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def resnet18_cifar() -> nn.Module:
    """ResNet-18 CIFAR variant: 3x3 stride-1 stem, no max-pool, 512-d features."""
    import torchvision

    net: nn.Module = torchvision.models.resnet18()
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net


class SimCLR(nn.Module):
    """Backbone + lightly ``SimCLRProjectionHead``; ``forward`` returns the projection."""

    def __init__(self, backbone: nn.Module, feature_dim: int, hidden: int, out: int) -> None:
        super().__init__()
        from lightly.models.modules import SimCLRProjectionHead

        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(feature_dim, hidden, out)

    def forward(self, x: Tensor) -> Tensor:
        features = self.backbone(x).flatten(start_dim=1)
        out: Tensor = self.projection_head(features)
        return out


def build_model(cfg: DictConfig) -> SimCLR:
    """Builds the SimCLR model of the preset (call after seeding)."""
    m = cfg.model
    if m.backbone == "digits_cnn":
        return SimCLR(digits_cnn(int(m.width)), 4 * int(m.width), m.proj_hidden, m.proj_dim)
    if m.backbone == "resnet18_cifar":
        return SimCLR(resnet18_cifar(), 512, m.proj_hidden, m.proj_dim)
    raise ValueError(f"model.backbone must be 'digits_cnn' or 'resnet18_cifar', got {m.backbone!r}")


# ----------------------------------------------------------------------------- criteria


def build_criterion(name: str, cfg: DictConfig, gather: bool) -> nn.Module:
    """The criterion ``name`` with its preset hyperparameters."""
    if name == "hug":
        h = cfg.hug
        bank = h.memory_bank_size
        return HUGCriterion(
            alpha=float(h.alpha),
            beta=float(h.beta),
            uniformity=h.uniformity,
            param=None if h.param is None else float(h.param),
            intra=h.intra,
            memory_bank_size=bank if isinstance(bank, int) else tuple(bank),
            gather_distributed=gather,
        )
    if name == "ntxent":
        from lightly.loss import NTXentLoss

        ntxent: nn.Module = NTXentLoss(
            temperature=float(cfg.ntxent.temperature), gather_distributed=gather
        )
        return ntxent
    if name == "hypersphere":
        from lightly.loss.hypersphere_loss import HypersphereLoss

        h = cfg.hypersphere
        hypersphere: nn.Module = HypersphereLoss(
            t=float(h.t), lam=float(h.lam), alpha=float(h.alpha)
        )
        return hypersphere
    raise ValueError(f"unknown criterion {name!r}; available: {list(CRITERIA)}")


class TwoViewLoss(nn.Module):
    """``loss_fn(model, batch)`` for the trainer: ``criterion(model(x0), model(x1))``.

    Under mixed precision the model runs in half precision but every criterion gets float32
    projections with autocast disabled (HUGCriterion does this itself; lightly's
    ``HypersphereLoss`` has no bfloat16 ``pdist`` on the CPU), so all three are compared in
    the same precision.
    """

    def __init__(self, criterion: nn.Module) -> None:
        super().__init__()
        self.criterion = criterion

    def forward(self, model: nn.Module, batch: Any) -> Tensor:
        views, _ = batch
        z0, z1 = model(views[0]), model(views[1])
        with torch.autocast(z0.device.type, enabled=False):
            out: Tensor = self.criterion(z0.float(), z1.float())
        return out


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def backbone_features(
    model: SimCLR, data: Dataset[Any], batch_size: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """L2-normalized backbone features and labels of a dataset (eval mode, CPU float32)."""
    from torch.utils.data import DataLoader

    was_training = model.training
    model.eval()
    feats, labels = [], []
    for x, y in DataLoader(data, batch_size=batch_size, shuffle=False):
        f = model.backbone(x.to(device)).flatten(start_dim=1).float()
        feats.append(F.normalize(f, dim=1).cpu())
        labels.append(torch.as_tensor(y))
    model.train(was_training)
    return torch.cat(feats), torch.cat(labels).long()


def evaluate(
    model: SimCLR,
    train_eval: Dataset[Any],
    test_eval: Dataset[Any],
    num_classes: int,
    cfg: DictConfig,
    device: torch.device,
) -> dict[str, float]:
    """kNN top-1, GNC2 ratio and NC4 agreement on the normalized backbone features."""
    from lightly.utils.benchmarking import knn_predict

    bank, bank_labels = backbone_features(model, train_eval, int(cfg.eval.batch_size), device)
    test, test_labels = backbone_features(model, test_eval, int(cfg.eval.batch_size), device)
    k = min(int(cfg.eval.knn_k), bank.shape[0])
    preds = []
    for start in range(0, test.shape[0], int(cfg.eval.batch_size)):
        query = test[start : start + int(cfg.eval.batch_size)]
        ranked = knn_predict(query, bank.T, bank_labels, num_classes, k, float(cfg.eval.knn_t))
        preds.append(ranked[:, 0])
    pred = torch.cat(preds)
    # The features are this process's full sets (rank 0 alone evaluates under DDP), so the
    # torchmetrics metrics must not sync across ranks.
    nc = NeuralCollapseMetrics(
        num_classes=num_classes, dim=bank.shape[1], s=1.0, sync_on_compute=False
    )
    nc.update(bank, bank_labels)
    stats = nc.compute()
    means, present = nc.class_means()
    agreement = NCMAgreement(means, present, sync_on_compute=False)
    agreement.update(test, test_labels, pred)
    nc4 = agreement.compute()
    return {
        "knn_top1": float((pred == test_labels).float().mean()),
        "gnc2_ratio": float(stats["gnc2_ratio"]),
        "nc1": float(stats["nc1"]),
        "nc4_agreement": float(nc4["nc4_agreement"]),
    }


# ----------------------------------------------------------------------------- main


def per_process_batch(global_batch: int, world: int) -> int:
    """The batch of each of ``world`` processes; ``trainer.batch_size`` is the global batch.

    Example:
        >>> per_process_batch(128, 2)
        64
    """
    if global_batch % world:
        raise ValueError(
            f"trainer.batch_size={global_batch} is the global batch and must be divisible by "
            f"the number of processes ({world})"
        )
    return global_batch // world


def images_per_run(num_train: int, per_batch: int, world: int, epochs: int, drop_last: bool) -> int:
    """Training images (of all ranks) one run processes, as the trainer's loader yields them.

    Each rank's ``DistributedSampler`` takes ``floor(N / world)`` images with ``drop_last``,
    else ``ceil(N / world)`` (padded by repetition; the padding is not counted).

    Example:
        >>> images_per_run(1348, 64, 2, 1, True), images_per_run(1348, 128, 1, 1, True)
        (1280, 1280)
    """
    if drop_last:
        steps = (num_train // world) // per_batch
        return epochs * steps * per_batch * world
    return epochs * num_train


def launch_command(args: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """The command that started this job, ``torchrun ...`` under torchrun (for the header).

    Example:
        >>> launch_command(["--preset", "quick"], {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"})
        'torchrun --nproc_per_node=2 integrations/selfsupervised.py --preset quick'
    """
    env = os.environ if env is None else env
    script = ["integrations/selfsupervised.py", *args]
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return shlex.join(["python", *script])
    local = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    nodes = [f"--nnodes={world // local}"] if local != world else []
    return shlex.join(["torchrun", *nodes, f"--nproc_per_node={local}", *script])


def run_one(
    name: str,
    seed: int,
    cfg: DictConfig,
    datasets: tuple[Dataset[Any], Dataset[Any], Dataset[Any], int, Any],
) -> dict[str, Any]:
    """Trains and evaluates one criterion with one seed (under DDP: on every rank)."""
    train_views, train_eval, test_eval, num_classes, collate_fn = datasets
    rank, world = distributed_info()
    per_batch = per_process_batch(int(cfg.trainer.batch_size), world)
    trainer_cfg = TrainerConfig.from_mapping(to_dict(cfg.trainer), seed=seed, batch_size=per_batch)
    if world > 1 and isinstance(collate_fn, BatchAugment):
        collate_fn = collate_fn.for_rank(seed, rank)
    trainer = Trainer(trainer_cfg)
    seed_everything(seed)
    model = build_model(cfg)
    loss_fn = TwoViewLoss(build_criterion(name, cfg, gather=world > 1))
    start = time.perf_counter()
    result = trainer.fit(model, train_views, loss_fn, collate_fn=collate_fn)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    seconds = time.perf_counter() - start
    num_train = len(train_views)  # type: ignore[arg-type]
    images = images_per_run(num_train, per_batch, world, trainer_cfg.epochs, trainer_cfg.drop_last)
    # DDP keeps the weights identical on all ranks: rank 0 evaluates on the full sets and
    # broadcasts its numbers (and its wall time) so every rank returns the same rows.
    shared: list[Any] = [None]
    if rank == 0:
        metrics = evaluate(model, train_eval, test_eval, num_classes, cfg, trainer.device)
        shared = [(metrics, seconds)]
    if world > 1:
        dist.broadcast_object_list(shared, src=0)
    metrics, seconds = shared[0]
    return {
        "criterion": CRITERION_NAMES[name],
        "seed": seed,
        **metrics,
        "final_loss": result.final["loss"],
        "train_images_per_s": images / seconds,
        "train_seconds": seconds,
    }


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Runs the benchmark; returns the summary rows."""
    args = list(sys.argv[1:] if argv is None else argv)
    init_distributed_from_env()
    cfg = parse_cli(args, "ssl", description=__doc__.splitlines()[0])
    if int(cfg.threads) > 0:
        torch.set_num_threads(int(cfg.threads))
    unknown = [c for c in cfg.criteria if c not in CRITERIA]
    if unknown or not cfg.criteria:
        raise ValueError(f"criteria must be a non-empty subset of {list(CRITERIA)}, got {unknown}")
    rank, world = distributed_info()
    per_batch = per_process_batch(int(cfg.trainer.batch_size), world)
    datasets = load_data(cfg)
    if world > 1:
        num_train = len(datasets[0])  # type: ignore[arg-type]
        shard = num_train // world if cfg.trainer.drop_last else math.ceil(num_train / world)
        print(
            f"[ssl] rank {rank}/{world}: {shard} of {num_train} training images "
            f"per epoch, batch {per_batch} per process ({per_batch * world} global)",
            flush=True,
        )
    runs: list[dict[str, Any]] = []
    for seed in cfg.seeds:
        for name in cfg.criteria:
            run = run_one(name, int(seed), cfg, datasets)
            runs.append(run)
            if is_main_process():
                print(
                    f"[ssl] {run['criterion']:>16s} seed {seed}: kNN top-1 {run['knn_top1']:.4f} "
                    f"GNC2 {run['gnc2_ratio']:.4f} NC4 {run['nc4_agreement']:.4f} "
                    f"{run['train_images_per_s']:.0f} img/s",
                    flush=True,
                )
    metrics = ("knn_top1", "gnc2_ratio", "nc1", "nc4_agreement", "train_images_per_s", "final_loss")
    rows: list[dict[str, Any]] = []
    for name in cfg.criteria:
        mine = [r for r in runs if r["criterion"] == CRITERION_NAMES[name]]
        row: dict[str, Any] = {"criterion": CRITERION_NAMES[name], "seeds": len(mine)}
        for key in metrics:
            row[key] = tuple(summarize(r[key] for r in mine))
        rows.append(row)
    if is_main_process():
        header = standard_header_lines(["integrations/selfsupervised.py", *args])
        header[0] = f"Command: `{launch_command(args)}`"
        t = cfg.trainer
        backend = dist.get_backend() if world > 1 else "none"
        header.append(
            f"Preset: data={cfg.data.name}, backbone={cfg.model.backbone}, epochs={t.epochs}, "
            f"batch={t.batch_size} (global) = {per_batch} x world_size={world} "
            f"(torch.distributed backend: {backend}), {t.optimizer} lr={t.lr}, "
            f"seeds={list(cfg.seeds)}; kNN k={cfg.eval.knn_k}, t={cfg.eval.knn_t} on normalized "
            "backbone features; GNC2 = Riesz(s=1) energy of the centred normalized class means "
            "/ optimum (train features); NC4 = kNN vs nearest-class-mean agreement (test); "
            "throughput = training images/s (2 views each), evaluation excluded."
        )
        h = cfg.hug
        header.append(
            f"HUGCriterion(alpha={h.alpha}, beta={h.beta}, uniformity={h.uniformity}, "
            f"param={h.param}); NTXentLoss(temperature={cfg.ntxent.temperature}); "
            f"HypersphereLoss(t={cfg.hypersphere.t}, lam={cfg.hypersphere.lam}, "
            f"alpha={cfg.hypersphere.alpha})."
            + (
                f" Under DDP HUGCriterion and NTXentLoss gather all {world} ranks (loss of the "
                f"global batch); HypersphereLoss has no gather: each rank's loss uses its local "
                f"{per_batch} images, DDP averages the gradients."
                if world > 1
                else ""
            )
        )
        stem = Path(str(cfg.output))
        digits = {
            "knn_top1": 4,
            "gnc2_ratio": 4,
            "nc1": 3,
            "nc4_agreement": 4,
            "train_images_per_s": 0,
            "final_loss": 4,
        }
        md, csv_path = write_tables(
            rows, stem, header, digits=digits, title="Self-supervised (SimCLR-style) benchmark"
        )
        write_tables(runs, stem.with_name(stem.name + "_runs"), header, digits=digits)
        print(md.read_text())
        print(f"[ssl] wrote {md}, {csv_path} and {stem.with_name(stem.name + '_runs')}.csv")
    return rows


if __name__ == "__main__":
    try:
        main()
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
