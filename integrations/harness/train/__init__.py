"""The one training/evaluation loop shared by every job in ``integrations/``.

:class:`Trainer` trains any model with any loss: it calls ``loss_fn(model, batch)`` for each
batch (already moved to the device) and, every ``eval_every`` epochs and after the last one,
``eval_fn(model)`` for metrics. Supervised classification is a thin layer on top
(:class:`SupervisedLoss`, :meth:`Trainer.fit_classifier`, :func:`evaluate_classifier`): the
model returns ``(features, logits)`` and an objective from :mod:`harness.objectives` turns
them and the labels into the loss. Self-supervised jobs pass their own ``loss_fn``.

What the loop takes care of:

* **Seeding** of Python, NumPy and torch (:func:`seed_everything`); the data order of every
  epoch is derived from ``(seed, epoch)`` alone.
* **Device**: ``device="auto"`` is CUDA when available, else the CPU.
* **Mixed precision** (``amp=True``): :func:`torch.autocast` with bfloat16 on the CPU and
  float16 with a gradient scaler on CUDA (``amp_dtype`` overrides the dtype).
* **Checkpoint and resume**: with ``checkpoint_path`` set, a checkpoint (model, optimizer,
  schedule, scaler, epoch, RNG states, history) is written atomically after every epoch, and a
  run started with an existing checkpoint continues from it. A killed run re-launched with the
  same configuration ends with the same weights and metrics as an uninterrupted one (bit for
  bit on the CPU). The learning rate of an epoch is a function of that epoch and the
  configured number of epochs only, so a finished run can be continued by raising ``epochs``
  (with a decaying schedule that run differs, from the first changed epoch on, from one
  configured with the larger ``epochs`` from the start).
* **Distributed data parallel**: when :mod:`torch.distributed` is initialized (e.g. under
  ``torchrun``) the model is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`,
  each rank reads its shard through a :class:`~torch.utils.data.DistributedSampler`, only rank
  0 writes files, and reported metrics are reduced over all ranks.
* **Progress bar** (tqdm, rank 0 only) that can be switched off. The loss is accumulated on
  the device and read back once per epoch: the hot loop makes no host synchronisation.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from harness.data import make_blobs_dataset
    >>> from harness.objectives import CrossEntropyObjective
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.body, self.head = nn.Linear(4, 8), nn.Linear(8, 3)
    ...     def forward(self, x):
    ...         features = self.body(x)
    ...         return features, self.head(features)
    >>> data = make_blobs_dataset(num_classes=3, dim=4, n_per_class=20, seed=0)
    >>> seed_everything(0)
    >>> trainer = Trainer(TrainerConfig(epochs=3, batch_size=16, lr=0.1, progress=False))
    >>> result = trainer.fit_classifier(Net(), data, CrossEntropyObjective(), eval_data=data)
    >>> sorted(result.final)
    ['epoch', 'loss', 'lr', 'test_accuracy', 'test_error']
    >>> result.final["test_accuracy"] > 0.9
    True
"""

from __future__ import annotations

from harness.train.checkpoints import (
    build_pixel_classifier,
    checkpoint_file,
    find_checkpoint,
    fit_pixel_classifier,
    load_checkpoint_weights,
    settings_tag,
    train_or_load,
)
from harness.train.config import TrainerConfig
from harness.train.diagnostics import fit_diagnostics
from harness.train.evaluate import evaluate_classifier, evaluate_collapse, extract_features
from harness.train.runtime import (
    distributed_info,
    init_distributed_from_env,
    is_main_process,
    move_to_device,
    resolve_device,
    seed_everything,
    torch_threads,
    unwrap_model,
)
from harness.train.schedule import EpochLRSchedule
from harness.train.supervised import AugmentedLoss, SupervisedLoss
from harness.train.trainer import (
    CHECKPOINT_FORMAT,
    EvalFn,
    FitResult,
    LossFn,
    Trainer,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "AugmentedLoss",
    "EpochLRSchedule",
    "EvalFn",
    "FitResult",
    "LossFn",
    "SupervisedLoss",
    "Trainer",
    "TrainerConfig",
    "build_pixel_classifier",
    "checkpoint_file",
    "distributed_info",
    "evaluate_classifier",
    "evaluate_collapse",
    "extract_features",
    "find_checkpoint",
    "fit_diagnostics",
    "fit_pixel_classifier",
    "init_distributed_from_env",
    "is_main_process",
    "load_checkpoint_weights",
    "move_to_device",
    "resolve_device",
    "seed_everything",
    "settings_tag",
    "torch_threads",
    "train_or_load",
    "unwrap_model",
]
