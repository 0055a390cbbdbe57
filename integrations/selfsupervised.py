"""SimCLR-style self-supervised benchmark: HUGCriterion vs NTXentLoss vs HypersphereLoss.

Every criterion trains the same backbone and lightly ``SimCLRProjectionHead`` with the same
epochs, batch, optimizer, schedule and seeds, through the library's one training loop
(:class:`harness.train.Trainer`). After training, on the L2-normalized backbone features:

* **kNN top-1** on the test set with the training set as the feature bank (lightly's
  ``knn_predict``, k = 200, t = 0.1, as lightly's benchmarks);
* **GNC2**: ``gnc2_ratio`` of :class:`hug_plugins.NeuralCollapseMetrics` on the training
  features with the true labels: Riesz (s = 1) energy of the normalized centred class means
  divided by the energy of an energy-minimizing configuration (1.0 = perfectly uniform);
* **NC4**: :class:`hug_plugins.NCMAgreement`, the rate at which the kNN decision on a test image
  equals the nearest-class-mean decision (class means of the training features);
* **throughput**: training images per second of each criterion's run (wall time of the
  training loop, evaluation excluded), measured in the same process.

Presets (``configs/selfsupervised/``):

* ``quick``: scikit-learn's embedded 8x8 digits, a small CNN, CPU, a few minutes for 3 seeds.
  Lightly's image transforms expect natural RGB (PIL) images, so the digits get a batched
  tensor augmentation instead (:class:`harness.simclr.DigitsViews`: random resized crop +
  rotation as one affine warp, plus Gaussian noise), applied in the DataLoader's ``collate_fn``.
* ``cifar10``: ResNet-18 CIFAR variant (3x3 stem, no max-pool), lightly's
  ``SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)`` as in lightly's
  CIFAR-10 benchmark; ``--data-root`` is any root :func:`harness.data.load_image_dataset`
  reads (a folder holding ``cifar10-jpeg/``, an ImageFolder root, a torchvision root).
  Lightly's published reference: SimCLR kNN top-1 0.847 (ResNet-18, 200 epochs, batch 128,
  GPU).

Output: ``<output>.md`` and ``<output>.csv`` (mean +- std over seeds, with the exact command and
the hardware in the header), ``<output>_runs.csv`` (one row per criterion and seed) and
``<output>_done.jsonl`` (finished runs: a restarted job skips them; with ``checkpoint_dir`` a
run cut mid-way resumes from its last epoch).

Usage::

    python integrations/selfsupervised.py --preset quick
    python integrations/selfsupervised.py --preset cifar10 --data-root ../shared/data/cifar10-jpeg
    python integrations/selfsupervised.py --preset quick trainer.epochs=5 seeds=[0] criteria=[hug]

Distributed: ``torchrun --nproc_per_node=N integrations/selfsupervised.py --preset quick`` (gloo
on CPUs, NCCL on GPUs) prints and writes the same tables. ``trainer.batch_size`` is the *global*
batch: each of the N processes trains on ``batch_size / N`` images per step (it must divide) from
its own shard of the training set (the trainer's ``DistributedSampler``), and the model is
wrapped in ``DistributedDataParallel`` (:class:`harness.train.Trainer`), so the figures are
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
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from harness.config import parse_cli, to_dict
from harness.io import RunLog
from harness.simclr import (
    CRITERIA,
    CRITERION_NAMES,
    load_ssl_datasets,
    per_process_batch,
    run_ssl,
    ssl_settings_tag,
)
from harness.tables import standard_header_lines, summarize_runs, write_tables
from harness.train import distributed_info, init_distributed_from_env, is_main_process


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Runs the benchmark; returns the summary rows."""
    args = list(sys.argv[1:] if argv is None else argv)
    init_distributed_from_env()
    cfg = parse_cli(args, "selfsupervised", description=__doc__.splitlines()[0])
    if cfg.num_threads is not None:
        torch.set_num_threads(int(cfg.num_threads))
    unknown = [c for c in cfg.criteria if c not in CRITERIA]
    if unknown or not cfg.criteria:
        raise ValueError(f"criteria must be a non-empty subset of {list(CRITERIA)}, got {unknown}")
    rank, world = distributed_info()
    per_batch = per_process_batch(int(cfg.trainer.batch_size), world)
    d = cfg.data
    datasets = load_ssl_datasets(
        str(d.name),
        None if d.root is None else str(d.root),
        split_seed=int(d.split_seed),
        test_fraction=float(d.test_fraction),
        crop_scale=tuple(d.crop_scale),
        rotation=float(d.rotation),
        noise_std=float(d.noise_std),
        train_subset=None if d.train_subset is None else int(d.train_subset),
    )
    if world > 1:
        num_train = len(datasets.train)  # type: ignore[arg-type]
        shard = num_train // world if cfg.trainer.drop_last else math.ceil(num_train / world)
        print(
            f"[ssl] rank {rank}/{world}: {shard} of {num_train} training images "
            f"per epoch, batch {per_batch} per process ({per_batch * world} global)",
            flush=True,
        )
    job = to_dict(cfg)
    stem = Path(str(cfg.output_dir)) / str(cfg.output_name)
    # Finished runs, one line each: a restarted job skips them (a changed setting changes the tag).
    run_log = RunLog(stem.with_name(stem.name + "_done.jsonl"), ("criterion", "seed", "settings"))
    runs: list[dict[str, Any]] = []
    for seed in cfg.seeds:
        for name in cfg.criteria:
            key = {
                "criterion": CRITERION_NAMES[name],
                "seed": int(seed),
                "settings": ssl_settings_tag(str(name), job, world),
            }
            restored = run_log.done(key)
            if restored:
                run = {k: v for k, v in run_log.get(key).items() if k != "settings"}
            else:
                run = run_ssl(str(name), int(seed), job, datasets)
                if is_main_process():
                    run_log.append({**run, "settings": key["settings"]})
            runs.append(run)
            if is_main_process():
                print(
                    f"[ssl] {run['criterion']:>16s} seed {seed}: kNN top-1 {run['knn_top1']:.4f} "
                    f"GNC2 {run['gnc2_ratio']:.4f} NC4 {run['nc4_agreement']:.4f} "
                    f"{run['train_images_per_s']:.0f} img/s{' (restored)' if restored else ''}",
                    flush=True,
                )
    metrics = ("knn_top1", "gnc2_ratio", "nc1", "nc4_agreement", "train_images_per_s", "final_loss")
    baseline = {"criterion": CRITERION_NAMES["ntxent"]} if "ntxent" in cfg.criteria else None
    rows = summarize_runs(
        runs,
        ["criterion"],
        metrics,
        paired={"knn_top1": "knn_vs_NTXent"} if baseline else None,
        baseline=baseline,
    )
    if is_main_process():
        header = standard_header_lines(["integrations/selfsupervised.py", *args])
        t = cfg.trainer
        backend = dist.get_backend() if world > 1 else "none"
        header.append(
            f"Preset: data={cfg.data.name}, backbone={cfg.model.backbone}, epochs={t.epochs}, "
            f"batch={t.batch_size} (global) = {per_batch} x world_size={world} "
            f"(torch.distributed backend: {backend}), {t.optimizer} lr={t.lr}, "
            f"seeds={list(cfg.seeds)}; kNN k={cfg.eval.knn_k}, t={cfg.eval.knn_t} on normalized "
            "backbone features; GNC2 = Riesz(s=1) energy of the centred normalized class means "
            "/ optimum (train features); NC4 = kNN vs nearest-class-mean agreement (test); "
            "throughput = training images/s (2 views each), evaluation excluded; knn_vs_NTXent = "
            "paired per-seed kNN top-1 difference to NTXentLoss."
        )
        h = cfg.hug
        header.append(
            f"HUGCriterion(alpha={h.alpha}, beta={h.beta}, kernel={h.kernel}, s={h.s}); "
            f"NTXentLoss(temperature={cfg.ntxent.temperature}); "
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
        digits = {
            "knn_top1": 4,
            "knn_vs_NTXent": 4,
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
