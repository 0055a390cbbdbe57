"""Evaluation and one training run of the SimCLR-style benchmark (single process or DDP)."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from harness.simclr.data import DigitsViews, SSLDatasets
from harness.simclr.model import (
    CRITERION_NAMES,
    SimCLR,
    TwoViewLoss,
    build_criterion,
    build_ssl_model,
)
from harness.train import (
    Trainer,
    TrainerConfig,
    distributed_info,
    seed_everything,
    settings_tag,
)
from hug_plugins.metrics import NCMAgreement, NeuralCollapseMetrics


@torch.no_grad()
def backbone_features(
    model: SimCLR, data: Dataset[Any], batch_size: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """L2-normalized backbone features and labels of a dataset (eval mode, CPU float32)."""
    was_training = model.training
    model.eval()
    feats, labels = [], []
    for x, y in DataLoader(data, batch_size=batch_size, shuffle=False):
        f = model.backbone(x.to(device)).flatten(start_dim=1).float()
        feats.append(F.normalize(f, dim=1).cpu())
        labels.append(torch.as_tensor(y))
    model.train(was_training)
    return torch.cat(feats), torch.cat(labels).long()


def evaluate_ssl(
    model: SimCLR,
    train_eval: Dataset[Any],
    test_eval: Dataset[Any],
    num_classes: int,
    *,
    knn_k: int = 200,
    knn_t: float = 0.1,
    batch_size: int = 512,
    device: torch.device | None = None,
) -> dict[str, float]:
    """kNN top-1, GNC2 ratio, NC1 and NC4 agreement on the normalized backbone features.

    kNN: lightly's ``knn_predict`` with the training features as the bank. GNC2:
    :class:`~hug_plugins.metrics.NeuralCollapseMetrics` (Riesz s = 1) on the training
    features with the true labels. NC4: :class:`~hug_plugins.metrics.NCMAgreement`, how often
    the kNN decision on a test image equals the nearest-class-mean decision.
    """
    from lightly.utils.benchmarking import knn_predict

    dev = device if device is not None else next(model.parameters()).device
    bank, bank_labels = backbone_features(model, train_eval, batch_size, dev)
    test, test_labels = backbone_features(model, test_eval, batch_size, dev)
    k = min(knn_k, bank.shape[0])
    preds = []
    for start in range(0, test.shape[0], batch_size):
        query = test[start : start + batch_size]
        preds.append(knn_predict(query, bank.T, bank_labels, num_classes, k, knn_t)[:, 0])
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


# ----------------------------------------------------------------------------- DDP batches


def per_process_batch(global_batch: int, world: int) -> int:
    """The batch of each of ``world`` processes, for a *global* batch size.

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


# ----------------------------------------------------------------------------- one run


def ssl_settings_tag(name: str, job: Mapping[str, Any], world: int) -> str:
    """Hash of everything that changes a run of criterion ``name`` except its seed: the data
    (not its path), model, trainer (not its progress/device/worker settings), evaluation, the
    criterion's own section, what it resolves to (HUGCriterion's full HUG configuration, so a
    new default is a new run; lightly's criteria by their repr) and the number of processes."""
    skip = ("progress", "device", "num_workers")
    options = job.get(name) or {}
    criterion = build_criterion(name, options)
    config = getattr(criterion, "config", None)
    resolved: Any = repr(criterion)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        resolved = dataclasses.asdict(config)
    return settings_tag(
        {
            "criterion": name,
            "options": job.get(name),
            "resolved": resolved,
            "data": {k: v for k, v in job["data"].items() if k != "root"},
            "model": job["model"],
            "trainer": {k: v for k, v in job["trainer"].items() if k not in skip},
            "eval": job["eval"],
            "world": world,
        }
    )


def run_ssl(name: str, seed: int, job: Mapping[str, Any], data: SSLDatasets) -> dict[str, Any]:
    """Trains criterion ``name`` with one seed and evaluates it (under DDP: on every rank).

    ``job`` is the self-supervised job's config as plain containers
    (``configs/selfsupervised/*.yaml``): ``trainer`` (global batch), ``model.{backbone, width,
    proj_hidden, proj_dim}``, the criterion's own section (``job[name]``),
    ``eval.{knn_k, knn_t, batch_size}`` and ``checkpoint_dir`` (null: none; else the run is
    checkpointed after every epoch under a name holding :func:`ssl_settings_tag`, and a
    restarted run resumes from it). Under DDP the weights stay identical on all ranks: rank 0
    evaluates on the full sets and broadcasts its numbers and its wall time, so every rank
    returns the same row.

    Returns:
        ``{"criterion", "seed", knn_top1, gnc2_ratio, nc1, nc4_agreement, "final_loss",
        "train_images_per_s", "train_seconds", "resumed_from_epoch"}``; the throughput counts
        the epochs trained in this call (NaN when a finished checkpoint was only reloaded).
    """
    train_views, collate_fn = data.train, data.collate_fn
    rank, world = distributed_info()
    per_batch = per_process_batch(int(job["trainer"]["batch_size"]), world)
    checkpoint = None
    if job.get("checkpoint_dir"):
        tag = ssl_settings_tag(name, job, world)
        stem = f"{job['data']['name']}_{job['model']['backbone']}_{name}_seed{seed}_{tag}.pt"
        checkpoint = str(Path(str(job["checkpoint_dir"])) / stem)
    trainer_cfg = TrainerConfig.from_mapping(
        job["trainer"], seed=seed, batch_size=per_batch, checkpoint_path=checkpoint
    )
    if world > 1 and isinstance(collate_fn, DigitsViews):
        collate_fn = collate_fn.for_rank(seed, rank)
    trainer = Trainer(trainer_cfg)
    seed_everything(seed)
    m = job["model"]
    model = build_ssl_model(
        str(m["backbone"]),
        width=int(m["width"]),
        proj_hidden=int(m["proj_hidden"]),
        proj_dim=int(m["proj_dim"]),
    )
    loss_fn = TwoViewLoss(build_criterion(name, job.get(name) or {}, gather=world > 1))
    start = time.perf_counter()
    result = trainer.fit(model, train_views, loss_fn, collate_fn=collate_fn)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    seconds = time.perf_counter() - start
    num_train = len(train_views)  # type: ignore[arg-type]
    trained = result.epochs - result.start_epoch
    images = images_per_run(num_train, per_batch, world, trained, trainer_cfg.drop_last)
    shared: list[Any] = [None]
    if rank == 0:
        e = job["eval"]
        metrics = evaluate_ssl(
            model,
            data.train_eval,
            data.test_eval,
            data.num_classes,
            knn_k=int(e["knn_k"]),
            knn_t=float(e["knn_t"]),
            batch_size=int(e["batch_size"]),
            device=trainer.device,
        )
        shared = [(metrics, seconds)]
    if world > 1:
        dist.broadcast_object_list(shared, src=0)
    metrics, seconds = shared[0]
    return {
        "criterion": CRITERION_NAMES[name],
        "seed": seed,
        **metrics,
        "final_loss": result.final["loss"],
        "train_images_per_s": images / seconds if trained > 0 else math.nan,
        "train_seconds": seconds,
        "resumed_from_epoch": result.start_epoch,
    }
