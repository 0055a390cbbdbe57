"""The training loop: :class:`Trainer` and the loss adapters it calls."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from harness.io import atomic_torch_save
from harness.objectives import Objective
from harness.train.config import TrainerConfig
from harness.train.evaluate import evaluate_classifier
from harness.train.loaders import build_train_loader, loader_sampler
from harness.train.runtime import (
    capture_rng,
    distributed_info,
    epoch_seed,
    move_to_device,
    resolve_device,
    restore_rng,
    seed_everything,
    unwrap_model,
)
from harness.train.schedule import EpochLRSchedule
from harness.train.supervised import SupervisedLoss

LossFn = Callable[[nn.Module, Any], Tensor]
"""``loss_fn(model, batch) -> scalar Tensor``; the batch is already on the training device."""

EvalFn = Callable[[nn.Module], Mapping[str, float]]
"""``eval_fn(model) -> {name: value}``; called with the unwrapped model in eval mode."""

EpochCallback = Callable[[int, Mapping[str, float]], None]
"""``on_epoch_end(epoch_index, history_entry)``, called on every rank after each epoch."""

CHECKPOINT_FORMAT = 1
"""Version number stored in every checkpoint."""


# --------------------------------------------------------------------------- trainer


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` returns.

    Attributes:
        history: One entry per completed epoch (including epochs restored from a checkpoint):
            ``epoch`` (1-based), ``loss`` (mean training loss over all ranks), ``lr`` and, in
            evaluated epochs, the metrics of ``eval_fn``.
        start_epoch: Epochs already completed (from a checkpoint) when ``fit`` was called.
        epochs: The configured number of epochs.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    start_epoch: int = 0
    epochs: int = 0

    @property
    def final(self) -> dict[str, float]:
        """The last history entry (it includes the metrics of the final evaluation)."""
        return dict(self.history[-1]) if self.history else {}

    @property
    def resumed(self) -> bool:
        """Whether training continued from a checkpoint."""
        return self.start_epoch > 0


@dataclass
class _Run:
    """What :meth:`Trainer.fit` builds once and its steps share."""

    model: nn.Module
    loss_module: nn.Module | None
    params: list[nn.Parameter]
    extra: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    schedule: EpochLRSchedule
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype
    rank: int
    world: int


class Trainer:
    """Trains a model with a loss function; see the module docstring for what it handles.

    Args:
        config: The settings; a mapping is converted with :meth:`TrainerConfig.from_mapping`.

    Attributes:
        config: The validated settings.
        device: The device training runs on.
        optimizer: The optimizer of the last :meth:`fit` call (``None`` before).

    Example:
        >>> trainer = Trainer(TrainerConfig(epochs=1, device="cpu", progress=False))
        >>> trainer.device
        device(type='cpu')
    """

    def __init__(self, config: TrainerConfig | Mapping[str, Any] | None = None) -> None:
        if config is None:
            config = TrainerConfig()
        elif not isinstance(config, TrainerConfig):
            config = TrainerConfig.from_mapping(config)
        self.config = config  # frozen: validated when it was built
        self.device = resolve_device(config.device)
        self.optimizer: torch.optim.Optimizer | None = None

    # -- building blocks ------------------------------------------------------------------

    def _amp_dtype(self) -> torch.dtype:
        name = self.config.amp_dtype
        if name == "auto":
            return torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.float16 if name == "float16" else torch.bfloat16

    def _build_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        cfg = self.config
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(
                params,
                lr=cfg.lr,
                momentum=cfg.momentum,
                weight_decay=cfg.weight_decay,
                nesterov=cfg.nesterov and cfg.momentum > 0,
            )
        if cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def _checkpoint_state(
        self,
        model: nn.Module,
        loss_module: nn.Module | None,
        optimizer: torch.optim.Optimizer,
        schedule: EpochLRSchedule,
        scaler: torch.amp.GradScaler,
        epoch: int,
        history: list[dict[str, float]],
    ) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "model": model.state_dict(),
            "loss_fn": loss_module.state_dict() if loss_module is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": capture_rng(),
            "history": [dict(entry) for entry in history],
            "config": self.config.to_dict(),
        }

    # -- public API -----------------------------------------------------------------------

    def fit(
        self,
        model: nn.Module,
        train_data: Dataset[Any] | DataLoader[Any],
        loss_fn: LossFn,
        eval_fn: EvalFn | None = None,
        *,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        on_epoch_end: EpochCallback | None = None,
    ) -> FitResult:
        """Trains ``model`` for ``config.epochs`` epochs (resuming from a checkpoint if any).

        Seeds everything with ``config.seed`` first; build the model after
        :func:`seed_everything` for reproducible initial weights. All trainable parameters
        should live in ``model``; trainable parameters of a ``loss_fn`` that is an
        :class:`~torch.nn.Module` are trained too (their gradients are averaged over ranks).

        Args:
            model: The model; moved to the trainer's device (in place).
            train_data: A Dataset (the trainer builds a seeded, shuffling, DDP-aware loader) or
                a DataLoader (used as is; under DDP it must use a DistributedSampler).
            loss_fn: ``loss_fn(model, batch) -> scalar Tensor``; receives the (DDP-wrapped)
                model and the batch moved to the device.
            eval_fn: ``eval_fn(model) -> {name: float}``, called with the unwrapped model in
                eval mode every ``eval_every`` epochs and after the last epoch, on every rank.
            collate_fn: Passed to the DataLoader built from a Dataset.
            on_epoch_end: Called as ``on_epoch_end(epoch_index, history_entry)`` on every rank.

        Returns:
            A :class:`FitResult` with the per-epoch history.

        Raises:
            ValueError: On bad data, a non-scalar loss, or a checkpoint that does not fit.
            FloatingPointError: If the epoch's mean training loss is not finite.
        """
        cfg = self.config
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise ValueError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        if eval_fn is not None and not callable(eval_fn):
            raise ValueError(f"eval_fn must be callable or None, got {type(eval_fn).__name__}")
        loader, generator = build_train_loader(
            train_data, self.config, pin_memory=self.device.type == "cuda", collate_fn=collate_fn
        )
        seed_everything(cfg.seed)
        run = self._prepare(model, loss_fn)
        history: list[dict[str, float]] = []
        start_epoch = 0
        ckpt_path = Path(cfg.checkpoint_path) if cfg.checkpoint_path else None
        if ckpt_path is not None and ckpt_path.is_file():
            start_epoch, history = self._restore(run, ckpt_path)
        train_model = self._wrap_distributed(run)
        show = cfg.progress and run.rank == 0
        epoch_bar = tqdm(
            total=cfg.epochs,
            initial=min(start_epoch, cfg.epochs),
            desc="train",
            unit="epoch",
            disable=not show,
            dynamic_ncols=True,
        )
        try:
            for epoch in range(start_epoch, cfg.epochs):
                entry: dict[str, float] = {
                    "epoch": epoch + 1,
                    "loss": self._train_epoch(
                        run, train_model, loss_fn, loader, generator, epoch, show
                    ),
                    "lr": float(run.optimizer.param_groups[0]["lr"]),
                }
                is_last = epoch + 1 == cfg.epochs
                if eval_fn is not None and ((epoch + 1) % cfg.eval_every == 0 or is_last):
                    entry.update(self._evaluate(train_model, eval_fn, entry))
                history.append(entry)
                if ckpt_path is not None:
                    self._save(run, train_model, epoch + 1, history, ckpt_path)
                if on_epoch_end is not None:
                    on_epoch_end(epoch, entry)
                epoch_bar.set_postfix(
                    {k: f"{v:.4g}" for k, v in entry.items() if k != "epoch"}, refresh=False
                )
                epoch_bar.update(1)
        finally:
            epoch_bar.close()
        return FitResult(history=history, start_epoch=start_epoch, epochs=cfg.epochs)

    # ---- the named steps of fit ---------------------------------------------------------

    def _prepare(self, model: nn.Module, loss_fn: LossFn) -> _Run:
        """Moves the model (and a module loss) to the device; builds optimizer, schedule, scaler."""
        cfg = self.config
        rank, world = distributed_info()
        device = self.device
        model.to(device)
        loss_module = loss_fn if isinstance(loss_fn, nn.Module) else None
        if loss_module is not None:
            loss_module.to(device)
        model_param_ids = {id(p) for p in model.parameters()}
        params = [p for p in model.parameters() if p.requires_grad]
        extra: list[nn.Parameter] = []
        if loss_module is not None:
            extra = [
                p
                for p in loss_module.parameters()
                if p.requires_grad and id(p) not in model_param_ids
            ]
        if not params and not extra:
            raise ValueError("model (and loss_fn) have no trainable parameters")
        optimizer = self._build_optimizer(params + extra)
        schedule = EpochLRSchedule(optimizer, cfg)
        amp_dtype = self._amp_dtype()
        use_scaler = cfg.amp and amp_dtype == torch.float16 and device.type == "cuda"
        scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        self.optimizer = optimizer
        return _Run(
            model, loss_module, params, extra, optimizer, schedule, scaler, amp_dtype, rank, world
        )

    def _restore(self, run: _Run, ckpt_path: Path) -> tuple[int, list[dict[str, float]]]:
        """Loads a checkpoint into the run; returns the epoch to start from and the history."""
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{str(ckpt_path)!r} is not a hug_plugins trainer checkpoint")
        try:
            run.model.load_state_dict(state["model"])
            if run.loss_module is not None and state.get("loss_fn") is not None:
                run.loss_module.load_state_dict(state["loss_fn"])
            run.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ValueError(
                f"checkpoint {str(ckpt_path)!r} does not match this model/optimizer: {exc}"
            ) from None
        run.schedule.load_state_dict(state["scheduler"])
        run.scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"])
        return int(state["epoch"]), [dict(entry) for entry in state["history"]]

    def _wrap_distributed(self, run: _Run) -> nn.Module:
        """The model to train: DDP-wrapped (and SyncBatchNorm if asked) under torch.distributed."""
        cfg = self.config
        if run.world == 1:
            return run.model
        if cfg.sync_batchnorm:
            run.model = nn.SyncBatchNorm.convert_sync_batchnorm(run.model)  # type: ignore[no-untyped-call]
        device = self.device
        wrapped = DistributedDataParallel(
            run.model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.find_unused_parameters,
        )
        for p in run.extra:  # keep parameters outside the model identical on all ranks
            dist.broadcast(p.data, src=0)
        return wrapped

    def _train_epoch(
        self,
        run: _Run,
        train_model: nn.Module,
        loss_fn: LossFn,
        loader: DataLoader[Any],
        generator: torch.Generator | None,
        epoch: int,
        show: bool,
    ) -> float:
        """One epoch of optimizer steps; returns the mean training loss over all ranks."""
        cfg = self.config
        device = self.device
        distributed = run.world > 1
        if generator is not None:
            generator.manual_seed(epoch_seed(cfg.seed, epoch))
        sampler = loader_sampler(loader)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        run.schedule.set_epoch(epoch)
        train_model.train()
        loss_sum = torch.zeros((), device=device, dtype=torch.float32)
        n_batches = 0
        all_params = run.params + run.extra
        batch_bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            leave=False,
            disable=not show,
            dynamic_ncols=True,
        )
        for batch in batch_bar:
            batch = move_to_device(batch, device)
            run.optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=run.amp_dtype, enabled=cfg.amp):
                loss = loss_fn(train_model, batch)
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss)
                raise ValueError(f"loss_fn must return a scalar tensor, got {shape}")
            scaled: Tensor = run.scaler.scale(loss.reshape(()))
            scaled.backward()  # type: ignore[no-untyped-call]
            if distributed:
                for p in run.extra:
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad.div_(run.world)
            if cfg.grad_clip is not None:
                run.scaler.unscale_(run.optimizer)
                nn.utils.clip_grad_norm_(all_params, cfg.grad_clip)
            run.scaler.step(run.optimizer)
            run.scaler.update()
            loss_sum += loss.detach().float().reshape(())
            n_batches += 1
        batch_bar.close()
        if n_batches == 0:
            raise ValueError(
                "the training loader produced no batches (is the dataset smaller than "
                "batch_size with drop_last=True?)"
            )
        totals = torch.stack([loss_sum, torch.tensor(float(n_batches), device=device)])
        if distributed:
            dist.all_reduce(totals)
        mean_loss = float((totals[0] / totals[1]).item())
        if not math.isfinite(mean_loss):
            raise FloatingPointError(
                f"training loss is {mean_loss} in epoch {epoch + 1}; lower the learning "
                "rate, enable grad_clip, or check the loss inputs"
            )
        return mean_loss

    @staticmethod
    def _evaluate(
        train_model: nn.Module, eval_fn: EvalFn, entry: Mapping[str, float]
    ) -> dict[str, float]:
        """``eval_fn`` on the unwrapped model in eval mode (training mode restored after)."""
        inner = unwrap_model(train_model)
        was_training = inner.training
        inner.eval()
        try:
            metrics = eval_fn(inner)
        finally:
            inner.train(was_training)
        clash = sorted(set(metrics) & set(entry))
        if clash:
            raise ValueError(f"eval_fn returned reserved metric names {clash}")
        return {str(k): float(v) for k, v in metrics.items()}

    def _save(
        self,
        run: _Run,
        train_model: nn.Module,
        epochs_done: int,
        history: list[dict[str, float]],
        ckpt_path: Path,
    ) -> None:
        """Writes the checkpoint atomically (rank 0), then waits for every rank."""
        if run.rank == 0:
            atomic_torch_save(
                self._checkpoint_state(
                    unwrap_model(train_model),
                    run.loss_module,
                    run.optimizer,
                    run.schedule,
                    run.scaler,
                    epochs_done,
                    history,
                ),
                ckpt_path,
            )
        if run.world > 1:
            dist.barrier()

    def fit_classifier(
        self,
        model: nn.Module,
        train_data: Dataset[Any] | DataLoader[Any],
        objective: Objective,
        eval_data: Dataset[Any] | DataLoader[Any] | None = None,
        *,
        eval_prefix: str = "test_",
        eval_batch_size: int = 512,
        on_epoch_end: EpochCallback | None = None,
    ) -> FitResult:
        """Supervised classification: ``objective(*model(x), y)`` with accuracy evaluation.

        Args:
            model: Returns ``(features, logits)`` for a batch of inputs.
            train_data: Yields ``(inputs, labels)``; see :meth:`fit`.
            objective: ``objective(features, logits, labels) -> scalar Tensor``.
            eval_data: If given, :func:`evaluate_classifier` runs on it (as ``eval_fn``).
            eval_prefix: Prefix of the evaluation metric names.
            eval_batch_size: Batch size of the evaluation.
            on_epoch_end: See :meth:`fit`.

        Returns:
            The :class:`FitResult`; with ``eval_data`` its entries carry
            ``<prefix>accuracy`` and ``<prefix>error``.
        """
        eval_fn: EvalFn | None = None
        if eval_data is not None:
            data = eval_data
            device = self.device

            def eval_fn(inner: nn.Module) -> dict[str, float]:
                return evaluate_classifier(
                    inner,
                    data,
                    batch_size=eval_batch_size,
                    device=device,
                    num_workers=self.config.num_workers,
                    prefix=eval_prefix,
                )

        return self.fit(
            model, train_data, SupervisedLoss(objective), eval_fn, on_epoch_end=on_epoch_end
        )
