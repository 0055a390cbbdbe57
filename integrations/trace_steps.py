"""Per-step trace of one calibration setting: feature norm, neck gradient, batch accuracy, loss.

Trains the recipes of a calibration preset on one of its settings exactly as
``integrations/calibrate.py`` does (same data split, model, trainer and seeds) and records, at
every optimizer step, the mean feature norm ‖f‖ before the L2 normalization, the gradient norm
at the neck's weight, the batch accuracy and the loss; then scores the final model on the
validation hold-out (never the test set), as trained and with its BatchNorm statistics
recomputed on the training set. It shows what the epoch-level diagnostics cannot:
what the first steps do to the feature norm (docs: "Choosing HUG's settings", batch 512).

Run: ``python integrations/trace_steps.py --data-root ../shared/data --setting mnist-sgd-b512
--recipes ce default sq_hybrid sq_beta2 --seeds 0 1``; the trace goes to
``results/trace_steps_<setting>.json`` (written atomically) and a table to stdout.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from copy import deepcopy as copy_module
from pathlib import Path
from typing import Any

import calibrate
import torch
from harness.config import load_config, to_dict
from harness.io import atomic_write_text
from harness.objectives import CrossEntropyObjective, HUGObjective, Objective
from harness.train import (
    AugmentedLoss,
    Trainer,
    TrainerConfig,
    evaluate_classifier,
    seed_everything,
    torch_threads,
)
from torch import Tensor, nn
from torch.utils.data import DataLoader

from hug_plugins.losses import HUGLoss


class StepTrace(nn.Module):
    """Wraps an objective and records, per training call, ‖f‖, batch accuracy and the loss."""

    def __init__(self, objective: nn.Module) -> None:
        super().__init__()
        self.objective = objective
        self.rows: list[dict[str, float]] = []

    def forward(self, features: Tensor, logits: Tensor, labels: Tensor) -> Tensor:
        loss: Tensor = self.objective(features, logits, labels)
        if torch.is_grad_enabled():
            with torch.no_grad():
                self.rows.append(
                    {
                        "feature_norm": float(features.norm(dim=1).mean()),
                        "batch_acc": float((logits.argmax(1) == labels).float().mean()),
                        "loss": float(loss),
                    }
                )
        return loss


def _neck_weight(model: nn.Module) -> nn.Parameter:
    """The neck's last 2-D weight (the layer whose output is the feature f)."""
    weights = [p for name, p in model.named_parameters() if "neck" in name and p.ndim == 2]
    if not weights:
        raise ValueError("the model has no 2-D neck weight to trace")
    return weights[-1]


def recalibrated_batchnorm(model: nn.Module, data: Any, batch_size: int = 500) -> nn.Module:
    """A copy of ``model`` whose BatchNorm running statistics are recomputed on ``data``.

    The statistics become the exact mean and variance over one pass (``momentum=None``) in
    training mode without gradients; the weights are unchanged. Comparing the validation error
    before and after tells whether the running averages lag the trained weights.
    """
    copy = copy_module(model)
    norms = [m for m in copy.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    copy.train()
    with torch.no_grad():
        for batch in DataLoader(data, batch_size=batch_size):
            copy(batch[0])
    return copy.eval()


def trace_one(
    cfg: Any, setting: Any, recipe_name: str, seed: int, epochs: int | None = None
) -> dict[str, Any]:
    """Trains one (setting, recipe, seed) with the calibration job's pieces; returns the trace."""
    recipe = cfg.recipes[recipe_name]
    train, val, _, info = calibrate.setting_data(setting, cfg.data.root)
    seed_everything(seed)
    model = calibrate.recipe_model(setting, recipe, info, seed, cfg)
    objective: Objective = CrossEntropyObjective()
    if recipe.get("preset") is not None:
        hug = {k: v for k, v in to_dict(recipe).items() if k not in calibrate.RECIPE_KEYS}
        objective = HUGObjective(HUGLoss.preset(str(recipe.preset), **hug), model.head)
    trainer_cfg = {
        **to_dict(cfg.trainer),
        **to_dict(setting.trainer),
        **(to_dict(recipe.trainer) if recipe.get("trainer") is not None else {}),
    }
    if epochs is not None:
        trainer_cfg["epochs"] = epochs
    trace = StepTrace(objective)
    grads: list[float] = []
    _neck_weight(model).register_hook(lambda g: grads.append(float(g.norm())))
    Trainer(TrainerConfig.from_mapping(trainer_cfg, seed=seed)).fit(
        model, train, AugmentedLoss(trace, nn.Identity()), None
    )
    for row, grad in zip(trace.rows, grads, strict=False):
        row["neck_grad"] = grad
    val_error = evaluate_classifier(model, val, batch_size=1000, prefix="val_")["val_error"]
    recal = recalibrated_batchnorm(model, train)
    val_error_recal = evaluate_classifier(recal, val, batch_size=1000, prefix="val_")["val_error"]
    return {
        "recipe": recipe_name,
        "seed": seed,
        "val_error": val_error,
        "val_error_bn_recalibrated": val_error_recal,
        "steps": trace.rows,
    }


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="integrations/trace_steps.py", description=__doc__)
    parser.add_argument("--preset", default="default", help="calibration preset (name or path)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--setting", required=True, help="a setting name of the preset")
    parser.add_argument("--recipes", nargs="+", default=["ce", "default"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=None, help="override the setting's epochs")
    parser.add_argument("--output-dir", default="results")
    args = parser.parse_args(argv)
    overrides = [] if args.data_root is None else [f"data.root={args.data_root}"]
    cfg = load_config("calibrate", args.preset, overrides)
    settings = {str(s.name): s for s in cfg.settings}
    if args.setting not in settings:
        raise ValueError(f"unknown setting {args.setting!r}; the preset has {sorted(settings)}")
    unknown = [r for r in args.recipes if r not in cfg.recipes]
    if unknown:
        raise ValueError(f"unknown recipes {unknown}; the preset has {sorted(cfg.recipes)}")
    traces = []
    with torch_threads(1):
        for seed in args.seeds:
            for name in args.recipes:
                out = trace_one(cfg, settings[args.setting], name, seed, args.epochs)
                traces.append(out)
                steps = out["steps"]
                print(
                    f"{name} seed {seed}: val error {100 * out['val_error']:.2f} % "
                    f"({100 * out['val_error_bn_recalibrated']:.2f} % with BatchNorm statistics "
                    "recomputed on the training set)"
                )
                for i in sorted({0, 1, 2, 5, 10, 20, 40, len(steps) - 1} & set(range(len(steps)))):
                    s = steps[i]
                    print(
                        f"  step {i:3d}  |f| {s['feature_norm']:7.2f}  batch acc "
                        f"{s['batch_acc']:.3f}  loss {s['loss']:8.3f}  "
                        f"|dL/dW_neck| {s.get('neck_grad', float('nan')):.3f}"
                    )
    path = Path(args.output_dir) / f"trace_steps_{args.setting}.json"
    atomic_write_text(path, json.dumps(traces))
    print(f"wrote {path}")
    return traces


if __name__ == "__main__":
    main()
