"""Train a CE or HUG classifier once, reuse it from its checkpoint afterwards.

Jobs that evaluate trained models in several ways (robustness attacks, long-tail shot groups)
train each (method, seed) through the one :class:`~harness.train.Trainer` with a checkpoint:
a finished checkpoint is reloaded instead of retrained, a killed run resumes from its last
epoch, and ``eval_only`` refuses to train at all.

Example:
    >>> checkpoint_file("ck", "digits", "mlp", "hug", 1, ratio=0.01).name
    'digits_mlp_lt0.01_hug_seed1.pt'
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from harness.data.augment import BatchAugment
from harness.data.pixels import PixelDatasetInfo
from harness.models import FeatureClassifier, build_classifier
from harness.objectives import CrossEntropyObjective, HUGObjective, Objective
from harness.train.config import TrainerConfig
from harness.train.runtime import is_main_process, seed_everything
from harness.train.supervised import AugmentedLoss, SupervisedLoss
from harness.train.trainer import Trainer
from hug_plugins.losses import HUGLoss

__all__ = [
    "build_pixel_classifier",
    "checkpoint_file",
    "find_checkpoint",
    "fit_pixel_classifier",
    "load_checkpoint_weights",
    "settings_tag",
    "train_or_load",
]


def load_checkpoint_weights(model: nn.Module, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Loads the model weights of a :class:`~harness.train.Trainer` checkpoint (or a bare
    state dict) into ``model``.

    Args:
        model: The model the checkpoint was trained with (same architecture).
        path: The checkpoint file.

    Returns:
        The checkpoint's metadata (``epoch``, ``history``, ``config``; empty for a state dict).

    Raises:
        ValueError: If the file is missing or does not fit the model.
    """
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"checkpoint {str(file)!r} does not exist")
    state = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{str(file)!r} is not a checkpoint or state dict")
    weights = state.get("model", state)
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError) as exc:
        raise ValueError(f"checkpoint {str(file)!r} does not fit the model: {exc}") from None
    return {k: v for k, v in state.items() if k in ("epoch", "history", "config")}


def train_or_load(
    model: FeatureClassifier,
    method: str,
    train_data: Dataset[Any],
    trainer_cfg: TrainerConfig | Mapping[str, Any],
    *,
    seed: int,
    checkpoint: str | os.PathLike[str] | None,
    hug_preset: str = "default",
    hug_overrides: dict[str, Any] | None = None,
    augment: nn.Module | None = None,
    eval_only: bool = False,
    progress: str | None = None,
) -> dict[str, float]:
    """Trains ``model`` with a CE or HUG objective, resuming from ``checkpoint``.

    Args:
        model: A :class:`~harness.models.FeatureClassifier` with a linear head (CE) or a
            :class:`~hug_plugins.proxies.ProxyHead` (HUG).
        method: ``"ce"`` or ``"hug"``.
        train_data: Training set.
        trainer_cfg: The job's :class:`~harness.train.TrainerConfig` (or its fields).
        seed: Run seed (overrides ``trainer_cfg``).
        checkpoint: Checkpoint file (``None``: no checkpoint).
        hug_preset: :class:`~hug_plugins.losses.HUGLoss` preset of the HUG method.
        hug_overrides: HUG config overrides (e.g. ``alpha``, ``beta``).
        augment: Batch augmentation applied to every training batch (e.g.
            :class:`~harness.data.BatchAugment`); ``None``: none.
        eval_only: Never train: load ``checkpoint`` (which must exist and have finished
            ``trainer_cfg.epochs`` epochs) and return.
        progress: A label: print a line per epoch to stderr (main process) with the loss and
            the time left in this run; ``None``: silent.

    Returns:
        ``{"train_loss", "epochs_trained"}``, plus ``"train_seconds"`` when it trained.

    Raises:
        ValueError: For an unknown method, ``eval_only`` without a checkpoint, or with an
            unfinished one.
    """
    if method not in ("ce", "hug"):
        raise ValueError(f"method must be 'ce' or 'hug', got {method!r}")
    base = (
        trainer_cfg
        if isinstance(trainer_cfg, TrainerConfig)
        else TrainerConfig.from_mapping(trainer_cfg)
    )
    if eval_only:
        if checkpoint is None:
            raise ValueError("eval_only needs a checkpoint directory")
        meta = load_checkpoint_weights(model, checkpoint)
        epochs = base.epochs
        if "epoch" in meta and int(meta["epoch"]) < epochs:
            raise ValueError(
                f"checkpoint {str(checkpoint)!r} is unfinished: epoch {meta['epoch']} of {epochs}"
            )
        history = meta.get("history") or [{"loss": math.nan}]
        return {"train_loss": float(history[-1]["loss"]), "epochs_trained": 0.0}
    objective: Objective
    if method == "ce":
        objective = CrossEntropyObjective()
    else:
        loss = HUGLoss.preset(hug_preset, **(hug_overrides or {}))
        objective = HUGObjective(loss, model.head)
    config = dataclasses.replace(
        base, seed=seed, checkpoint_path=None if checkpoint is None else str(checkpoint)
    )
    loss_fn = SupervisedLoss(objective) if augment is None else AugmentedLoss(objective, augment)
    start = time.perf_counter()
    done: list[int] = []

    def log_epoch(epoch: int, entry: Mapping[str, float]) -> None:
        done.append(epoch)
        if progress is None or not is_main_process():
            return
        elapsed = time.perf_counter() - start
        left = elapsed / len(done) * (config.epochs - epoch - 1)
        print(
            f"    {progress}: epoch {epoch + 1}/{config.epochs}, loss {entry['loss']:.4g}, "
            f"{elapsed:.0f} s, ~{left:.0f} s left in this run",
            file=sys.stderr,
            flush=True,
        )

    result = Trainer(config).fit(model, train_data, loss_fn, on_epoch_end=log_epoch)
    return {
        "train_loss": float(result.final["loss"]),
        "epochs_trained": float(result.epochs - result.start_epoch),
        "train_seconds": time.perf_counter() - start,
    }


def settings_tag(settings: Mapping[str, Any]) -> str:
    """A short hash of a run's settings, to name its checkpoint so that a changed recipe never
    resumes another recipe's run.

    Example:
        >>> settings_tag({"lr": 0.1, "epochs": 2}) == settings_tag({"epochs": 2, "lr": 0.1})
        True
        >>> len(settings_tag({"lr": 0.1}))
        8
    """
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


def checkpoint_file(
    directory: str | os.PathLike[str] | None,
    data: str,
    arch: str,
    method: str,
    seed: int,
    ratio: float | None = None,
    tag: str | None = None,
) -> Path | None:
    """The checkpoint path of one (data, arch, long-tail ratio, method, seed) run, ending in
    ``tag`` (a :func:`settings_tag` of the run's other settings) when given.

    Example:
        >>> checkpoint_file("ck", "digits", "mlp", "ce", 0).name
        'digits_mlp_ce_seed0.pt'
        >>> checkpoint_file("ck", "digits", "mlp", "ce", 0, tag="ab12cd34").name
        'digits_mlp_ce_seed0_ab12cd34.pt'
        >>> checkpoint_file(None, "digits", "mlp", "ce", 0) is None
        True
    """
    if directory is None:
        return None
    tail = "" if ratio is None or ratio == 1 else f"_lt{ratio:g}"
    suffix = "" if tag is None else f"_{tag}"
    return Path(directory) / f"{data}_{arch}{tail}_{method}_seed{seed}{suffix}.pt"


def build_pixel_classifier(
    method: str,
    info: PixelDatasetInfo,
    *,
    arch: str = "mlp",
    hidden: int = 128,
    feature_dim: int = 32,
    convs_per_stage: int = 2,
    proxy_mode: str = "learnable",
    scale: float = 16.0,
    seed: int = 0,
) -> FeatureClassifier:
    """A CE (linear head) or HUG (:class:`~hug_plugins.proxies.ProxyHead`) classifier for a
    :func:`~harness.data.load_pixel_datasets` dataset, normalization inside the model.

    Args:
        method: ``"ce"`` or ``"hug"``.
        info: The dataset's :class:`~harness.data.PixelDatasetInfo`.
        arch: ``"mlp"`` (two hidden layers of ``hidden``) or ``"cnn"`` (three stages of
            ``convs_per_stage`` conv-BN-ReLU of width ``hidden``, ``2 hidden``, ``4 hidden``).
        hidden: MLP width or CNN base width.
        feature_dim: Size of the linear neck (the features the losses see).
        convs_per_stage: Convolutions per CNN stage.
        proxy_mode: ProxyHead mode of HUG.
        scale: ProxyHead logit scale of HUG.
        seed: Seed of the proxy initialization (the weights come from the global torch RNG).

    Returns:
        The model; ``model(x)`` gives ``(features, logits)``.

    Example:
        >>> from harness.data import load_pixel_datasets
        >>> info = load_pixel_datasets("digits")[2]
        >>> net = build_pixel_classifier("hug", info)
        >>> [tuple(t.shape) for t in net(torch.rand(2, 64))]
        [(2, 32), (2, 10)]
    """
    if method not in ("ce", "hug"):
        raise ValueError(f"method must be 'ce' or 'hug', got {method!r}")
    if arch == "cnn" and len(info.input_shape) != 3:
        raise ValueError(f"arch 'cnn' needs (C, H, W) inputs, got {info.input_shape}")
    return build_classifier(
        arch,
        info.num_classes,
        info.input_shape[0] if len(info.input_shape) == 3 else len(info.mean),
        in_features=math.prod(info.input_shape),
        width=hidden,
        convs_per_stage=convs_per_stage,
        feature_dim=feature_dim,
        head="linear" if method == "ce" else "proxy",
        proxy_mode=proxy_mode,
        scale=scale,
        seed=seed,
        mean=info.mean,
        std=info.std,
    )


def fit_pixel_classifier(
    method: str,
    info: PixelDatasetInfo,
    train_data: Dataset[Any],
    *,
    model_options: Mapping[str, Any],
    hug_preset: str,
    hug_overrides: dict[str, Any] | None,
    trainer_cfg: TrainerConfig | Mapping[str, Any],
    seed: int,
    checkpoint: str | os.PathLike[str] | None,
    augment: bool = False,
    eval_only: bool = False,
    progress: bool = False,
) -> tuple[FeatureClassifier, dict[str, float]]:
    """Seeds, builds (:func:`build_pixel_classifier`) and trains or reloads (:func:`train_or_load`)
    one (method, seed) model: the step the robustness and long-tail jobs share.

    Args:
        method: ``"ce"`` or ``"hug"``.
        info: The dataset's info.
        train_data: Training set.
        model_options: Keyword arguments of :func:`build_pixel_classifier` (``arch``,
            ``hidden``, ``feature_dim``, ``convs_per_stage``, ``proxy_mode``, ``scale``).
        hug_preset: HUG preset name.
        hug_overrides: HUG config overrides.
        trainer_cfg: The job's :class:`~harness.train.TrainerConfig` (or its fields).
        seed: Run seed (weights, proxies, data order).
        checkpoint: Checkpoint file or ``None``.
        augment: CIFAR augmentation (:class:`~harness.data.BatchAugment`: crop with
            padding 4 and flip) of image inputs; ignored for flat inputs.
        eval_only: Only reload a finished checkpoint.
        progress: Print a line per epoch (see :func:`train_or_load`).

    Returns:
        ``(model, info)`` with the training summary of :func:`train_or_load`.
    """
    seed_everything(seed)
    model = build_pixel_classifier(method, info, seed=seed, **model_options)
    summary = train_or_load(
        model,
        method,
        train_data,
        trainer_cfg,
        seed=seed,
        checkpoint=checkpoint,
        hug_preset=hug_preset,
        hug_overrides=hug_overrides,
        augment=BatchAugment(4, True) if augment and len(info.input_shape) == 3 else None,
        eval_only=eval_only,
        progress=f"{method} seed {seed}" if progress else None,
    )
    return model, summary


def find_checkpoint(pattern: str, **fields: Any) -> Path:
    """The one file matching ``pattern`` once its ``{field}`` slots are filled.

    For jobs that evaluate models another job trained, e.g.
    ``"results/checkpoints/classification/cifar10_cnn_{method}_seed{seed}_*.pt"``.

    Args:
        pattern: A glob pattern with ``str.format`` slots.
        **fields: The slot values.

    Returns:
        The matching file.

    Raises:
        ValueError: If no file or more than one file matches, or a slot has no value.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "cnn_ce_seed0_ab12.pt").write_bytes(b"")
        >>> find_checkpoint(str(folder / "cnn_{method}_seed{seed}_*.pt"), method="ce", seed=0).name
        'cnn_ce_seed0_ab12.pt'
    """
    try:
        filled = Path(pattern.format(**fields))
    except (KeyError, IndexError) as exc:
        raise ValueError(
            f"checkpoint pattern {pattern!r} has a slot without a value: {exc}"
        ) from None
    found = sorted(filled.parent.glob(filled.name)) if filled.parent.is_dir() else []
    if len(found) != 1:
        what = "no file" if not found else f"{len(found)} files ({[p.name for p in found]})"
        raise ValueError(f"{what} match {str(filled)!r}; expected exactly one")
    return found[0]
