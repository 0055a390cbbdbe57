"""Calibration sweep of HUG's default recipe: validation error of loss recipes vs cross-entropy.

Every run trains on a training set minus a stratified hold-out and is scored on that hold-out
(never on test data): validation error, and NC1 / NC4 on the L2-normalized training features.
Settings vary the dataset (and with it the class count), the batch size and the optimizer at
its usual learning rate; recipes are cross-entropy or a HUGLoss preset with overrides, all
with the same model, data, budget and seeds. Finished runs are appended to
``<output>_runs.jsonl`` and skipped on a rerun (resume after a kill) as long as the recipe
resolves to the same configuration (:func:`run_tag`): a redefined recipe is trained anew.

Run: ``python integrations/calibrate.py --preset quick`` (digits, a minute) or
``python integrations/calibrate.py --preset default --data-root ../shared/data`` (hours).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.config import check_seeds, parse_cli, run_dependent_trainer_fields, to_dict
from harness.data import BatchAugment, load_image_dataset, split_holdout, subset
from harness.io import RunLog, atomic_write_text
from harness.models import build_classifier, classifier_weight
from harness.objectives import (
    AnnealedCEObjective,
    CrossEntropyObjective,
    HUGObjective,
    Objective,
)
from harness.tables import (
    history_csv,
    standard_header_lines,
    summarize,
    summarize_runs,
    write_result_tables,
    write_tables,
)
from harness.train import (
    AugmentedLoss,
    Trainer,
    TrainerConfig,
    evaluate_classifier,
    evaluate_collapse,
    fit_diagnostics,
    seed_everything,
    settings_tag,
    torch_threads,
)
from omegaconf import DictConfig
from torch import nn

from hug_plugins.functional import preset_config
from hug_plugins.losses import HUGLoss
from hug_plugins.proxies import ProxyHead, simplex_etf

TASK = "calibrate"
CE = {"recipe": "ce"}


def setting_data(setting: DictConfig, root: str | None) -> tuple[Any, Any, Any, Any]:
    """``(train, val, collapse_set, info)``: the hold-out is carved from the training set."""
    train, _, info = load_image_dataset(str(setting.dataset), root)
    rest, val = split_holdout(train, int(setting.val_size), seed=12345)
    if setting.get("train_subset") is not None:
        rest = subset(rest, int(setting.train_subset), seed=0)
    return rest, val, subset(rest, 2000, seed=1), info


RECIPE_KEYS = ("preset", "proxy_mode", "proxy_init", "neck_norm", "ce_anneal", "trainer", "family")
"""Recipe fields that are not HUGLoss keywords (the rest are passed to ``HUGLoss.preset``)."""


def hug_fields(recipe: DictConfig) -> dict[str, Any]:
    """The recipe's ``HUGLoss.preset`` keywords: every field but :data:`RECIPE_KEYS`."""
    return {k: v for k, v in to_dict(recipe).items() if k not in RECIPE_KEYS}


def trainer_settings(setting: DictConfig, recipe: DictConfig, cfg: DictConfig) -> dict[str, Any]:
    """The run's trainer fields: the shared ones, then the setting's, then the recipe's."""
    return {
        **to_dict(cfg.trainer),
        **to_dict(setting.trainer),
        **(to_dict(recipe.trainer) if recipe.get("trainer") is not None else {}),
    }


def run_tag(setting: DictConfig, recipe: DictConfig, cfg: DictConfig) -> str:
    """A hash of everything a run's result depends on but its seed: the setting (not its name
    or shortlist), the model, the trainer fields but the per-run ones, and the recipe *as it
    resolves* (a preset's full ``HUGConfig``). A finished run is reused, and a checkpoint
    resumed, only under the same tag, so a redefined recipe or a changed default is trained
    anew instead of silently reusing the old result.
    """
    model_keys = set(RECIPE_KEYS) - {"preset", "trainer", "family"}  # resolved apart / no effect
    resolved: dict[str, Any] = {k: v for k, v in to_dict(recipe).items() if k in model_keys}
    if recipe.get("preset") is not None:
        config = preset_config(str(recipe.preset), **hug_fields(recipe))
        resolved["hug"] = dataclasses.asdict(config)
    trainer = run_dependent_trainer_fields(trainer_settings(setting, recipe, cfg))
    data = {k: v for k, v in to_dict(setting).items() if k not in ("name", "recipes", "trainer")}
    return settings_tag(
        {"setting": data, "model": to_dict(cfg.model), "trainer": trainer, "recipe": resolved}
    )


def recipe_model(
    setting: DictConfig, recipe: DictConfig, info: Any, seed: int, cfg: DictConfig
) -> Any:
    """The setting's classifier with the recipe's head, proxies and neck normalization."""
    is_ce = recipe.get("preset") is None
    scale = float(recipe.get("logit_scale", 16.0))
    model = build_classifier(
        str(setting.arch),
        info.num_classes,
        info.in_channels,
        feature_dim=int(cfg.model.feature_dim),
        head="linear" if is_ce else "proxy",
        proxy_mode=str(recipe.get("proxy_mode", "learnable")),
        scale=scale,
        seed=seed,
        width=int(cfg.model.width),
        mean=info.mean,
        std=info.std,
    )
    if recipe.get("proxy_init") == "etf":  # fixed simplex ETF (Yang et al. 2022)
        init = simplex_etf(info.num_classes, model.feature_dim, seed=seed)
        model.head = ProxyHead(
            info.num_classes, model.feature_dim, mode="static_random", init=init, scale=scale
        )
    elif recipe.get("proxy_init") is not None:
        raise ValueError(f"proxy_init must be 'etf' or null, got {recipe.proxy_init!r}")
    if recipe.get("neck_norm") == "batchnorm":  # parameter-free feature-scale control
        model.neck = nn.Sequential(model.neck, nn.BatchNorm1d(model.feature_dim, affine=False))
    elif recipe.get("neck_norm") is not None:
        raise ValueError(f"neck_norm must be 'batchnorm' or null, got {recipe.neck_norm!r}")
    return model


def run_one(
    setting: DictConfig, recipe: DictConfig, seed: int, cfg: DictConfig, name: str = "run"
) -> dict[str, Any]:
    """Trains one (setting, recipe, seed) and scores it on the validation split.

    A setting with ``diagnose: N`` also records, after every epoch, the validation error and
    :func:`~harness.train.fit_diagnostics` on N un-augmented training samples (``history``).
    """
    train, val, collapse, info = setting_data(setting, cfg.data.root)
    is_ce = recipe.get("preset") is None
    hug = hug_fields(recipe)
    seed_everything(seed)
    model = recipe_model(setting, recipe, info, seed, cfg)
    objective: Objective = CrossEntropyObjective()
    if not is_ce:
        objective = HUGObjective(HUGLoss.preset(str(recipe.preset), **hug), model.head)
    trainer_cfg = trainer_settings(setting, recipe, cfg)
    augment: nn.Module = nn.Identity()
    if setting.augment:
        augment = BatchAugment(padding=int(setting.augment), flip=info.in_channels == 3)
    if cfg.get("checkpoint_dir"):
        tag = run_tag(setting, recipe, cfg)
        path = Path(str(cfg.checkpoint_dir)) / f"{setting.name}_{name}_{seed}_{tag}.pt"
        trainer_cfg["checkpoint_path"] = str(path)
    if setting.get("diagnose"):
        trainer_cfg["eval_every"] = 1
    config = TrainerConfig.from_mapping(trainer_cfg, seed=seed)
    if recipe.get("ce_anneal") is not None:  # CE weight 1 -> 0 over this fraction of training
        batches = len(train) / config.batch_size
        steps = (math.floor(batches) if config.drop_last else math.ceil(batches)) * config.epochs
        objective = AnnealedCEObjective(objective, max(1, round(float(recipe.ce_anneal) * steps)))
    eval_fn = None
    if setting.get("diagnose"):
        probe = subset(train, int(setting.diagnose), seed=1)
        score = getattr(objective, "score", objective)

        def eval_fn(inner: nn.Module) -> dict[str, float]:
            out = evaluate_classifier(inner, val, batch_size=1000, prefix="val_")
            fit = fit_diagnostics(inner, score, probe, batch_size=config.batch_size)
            return {"val_error": out["val_error"], **fit}

    trainer = Trainer(config)
    start = time.perf_counter()
    result = trainer.fit(model, train, AugmentedLoss(objective, augment), eval_fn)
    seconds = time.perf_counter() - start
    out = evaluate_classifier(model, val, batch_size=1000, prefix="val_")
    train_out = evaluate_classifier(model, collapse, batch_size=1000, prefix="train_")
    out.update(
        evaluate_collapse(
            model,
            collapse,
            info.num_classes,
            classifier_weight=classifier_weight(model),
            batch_size=1000,
            spaces=("unit",),
        )
    )
    record: dict[str, Any] = {
        "val_error": out["val_error"],
        "train_error": train_out["train_error"],
        "nc1_unit": out["unit_nc1"],
        "nc4_unit": out["unit_nc4_mismatch"],
        "train_loss": result.final.get("loss", float("nan")),
        "seconds": seconds,
    }
    if setting.get("diagnose"):
        record["history"] = result.history
    return record


def recipe_tables(
    runs: list[dict[str, Any]], settings: list[str], recipes: list[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per (setting, recipe) rows and one overall row per recipe (paired to CE by seed)."""
    percent = [{**r, "val_error_%": 100.0 * r["val_error"]} for r in runs]
    columns = ["val_error_%", "nc1_unit", "nc4_unit"]
    paired = {"val_error_%": "vs_CE_pp"}
    rows = summarize_runs(percent, ["setting", "recipe"], columns, paired=paired, baseline=CE)
    rows.sort(key=lambda r: (recipes.index(r["recipe"]), settings.index(r["setting"])))
    ce = {(r["setting"], r["seed"]): r["val_error_%"] for r in percent if r["recipe"] == "ce"}
    overall = []
    for recipe in [r for r in recipes if r != "ce"]:
        mine = [r for r in percent if r["recipe"] == recipe and (r["setting"], r["seed"]) in ce]
        diffs = [r["val_error_%"] - ce[r["setting"], r["seed"]] for r in mine]
        if diffs:
            paired_rows = [r["vs_CE_pp"] for r in rows if r["recipe"] == recipe and r["vs_CE_pp"]]
            wins = [d.mean <= 0.0 for d in paired_rows]
            overall.append(
                {
                    "recipe": recipe,
                    "mean_vs_CE_pp": summarize(diffs),
                    "worst_run_vs_CE_pp": max(diffs),
                    "settings_at_or_below_CE": sum(wins),
                }
            )
    return rows, overall


def per_method_rows(
    runs: list[dict[str, Any]],
    settings: list[str],
    recipes: dict[str, DictConfig],
    seeds: list[int],
) -> list[dict[str, Any]]:
    """The per-method protocol: each method scored at its best member of its own grid.

    Recipes with the same ``family`` field are one method's grid (e.g. its learning rates); a
    recipe without one is a method of its own. Per setting, a method's best member is the one
    with the lowest mean validation error over ``seeds``, among the members that ran every one
    of them (the others are listed as not run); the paired difference is to CE's family best.
    Validation data only: this picks hyperparameters, as the field does to compare losses.
    """
    family = {name: str(recipe.get("family") or name) for name, recipe in recipes.items()}
    grids: dict[str, list[str]] = {}
    for name in recipes:
        grids.setdefault(family[name], []).append(name)
    errors = {(r["setting"], r["recipe"], r["seed"]): 100.0 * r["val_error"] for r in runs}
    out: list[dict[str, Any]] = []
    for setting in settings:
        best: dict[str, tuple[str, list[float], int]] = {}  # member, its errors, members run
        for method, members in grids.items():
            complete = [m for m in members if all((setting, m, s) in errors for s in seeds)]
            if not complete:
                continue
            scored = [(summarize(errors[setting, m, s] for s in seeds).mean, m) for m in complete]
            member = min(scored)[1]
            best[method] = (member, [errors[setting, member, s] for s in seeds], len(complete))
        baseline = best.get(family["ce"])
        for method, (member, values, ran) in best.items():
            diff = None
            if baseline is not None and method != family["ce"]:
                diff = summarize(v - b for v, b in zip(values, baseline[1], strict=True))
            out.append(
                {
                    "setting": setting,
                    "method": method,
                    "best_member": member,
                    "grid_run": f"{ran} of {len(grids[method])}",
                    "val_error_%": summarize(values),
                    "vs_CE_best_pp": diff,
                }
            )
    return out


def pivot_markdown(rows: list[dict[str, Any]], settings: list[str], recipes: list[str]) -> str:
    """One line per recipe, one column per setting: ``error (paired difference to CE)``."""
    cells = {(r["setting"], r["recipe"]): r for r in rows}
    lines = ["| recipe | " + " | ".join(settings) + " |", "|---" * (len(settings) + 1) + "|"]
    for recipe in recipes:
        row = []
        for setting in settings:
            cell = cells.get((setting, recipe))
            if cell is None:
                row.append("—")
                continue
            text = f"{cell['val_error_%'].mean:.2f}"
            if cell["vs_CE_pp"] is not None:
                text += f" ({cell['vs_CE_pp'].mean:+.2f})"
            row.append(text)
        lines.append(f"| {recipe} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point: ``argv`` without the program name (``None``: ``sys.argv[1:]``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_cli(args, TASK, description=__doc__.splitlines()[0] if __doc__ else None)
    seeds = check_seeds(cfg.seeds)
    settings = {str(s.name): s for s in cfg.settings}
    recipes = {str(k): v for k, v in cfg.recipes.items()}
    if "ce" not in recipes:
        raise ValueError("recipes must include 'ce' (the baseline every recipe is paired with)")
    stem = Path(str(cfg.output_dir)) / str(cfg.output_name)
    # Keyed by the run tag too: a recipe redefined under the same name is a new run.
    run_log = RunLog(stem.parent / f"{stem.name}_runs.jsonl", ("setting", "recipe", "seed", "tag"))
    started = time.perf_counter()
    # ``only=[...]`` / ``only_recipes=[...]`` run a part of the sweep (e.g. one per process;
    # the run log is appended line by line, so processes on disjoint parts can share it).
    only = set(cfg.get("only") or settings)
    only_recipes = set(cfg.get("only_recipes") or recipes)
    tags = {
        (name, recipe_name): run_tag(setting, recipe, cfg)
        for name, setting in settings.items()
        for recipe_name, recipe in recipes.items()
    }
    with torch_threads(cfg.num_threads):
        for name, setting in settings.items():
            for recipe_name, recipe in recipes.items():
                if setting.get("recipes") and recipe_name not in setting.recipes:
                    continue  # the setting runs a shortlist (the baseline is always "ce")
                if name not in only or recipe_name not in only_recipes:
                    continue
                for seed in seeds:
                    record: dict[str, Any] = {
                        "setting": name,
                        "recipe": recipe_name,
                        "seed": seed,
                        "tag": tags[name, recipe_name],
                    }
                    if run_log.done(record):
                        continue
                    record.update(run_one(setting, recipe, seed, cfg, recipe_name))
                    run_log.append(record)  # one line per finished run
                    print(json.dumps(record), file=sys.stderr, flush=True)
    runs = [  # the runs of the recipes as they are defined now
        r for r in run_log.records if r.get("tag") == tags.get((r["setting"], r["recipe"]))
    ]
    rows, overall = recipe_tables(runs, list(settings), list(recipes))
    header = [
        *standard_header_lines(["integrations/calibrate.py", *args]),
        f"Seeds {seeds}; wall time of this invocation {time.perf_counter() - started:.0f} s.",
        "Settings: "
        + "; ".join(
            f"{n}: {s.dataset} {s.arch}, train subset {s.get('train_subset')}, val {s.val_size}, "
            f"augment {s.augment}, trainer {json.dumps(to_dict(s.trainer))}"
            for n, s in settings.items()
        ),
        f"Shared trainer settings: {json.dumps(to_dict(cfg.trainer))}.",
        "Recipes: " + "; ".join(f"{n}: {json.dumps(to_dict(r))}" for n, r in recipes.items()),
        "Columns: validation error % (hold-out of the training set), paired per-seed difference "
        "to CE in percentage points, NC1 / NC4 mismatch on x/‖x‖ of 2,000 training samples.",
    ]
    paths = write_result_tables(
        overall,
        rows,
        stem,
        header,
        title="Calibration: recipes vs cross-entropy (overall)",
        digits=2,
        run_digits=3,
    )
    pivot = "\n\n".join(header) + "\n\nValidation error % (paired difference to CE, pp):\n\n"
    paths["pivot_md"] = atomic_write_text(
        stem.parent / f"{stem.name}_pivot.md",
        pivot + pivot_markdown(rows, list(settings), list(recipes)),
    )
    per_method: list[dict[str, Any]] = []
    if any(recipe.get("family") for recipe in recipes.values()):
        per_method = per_method_rows(runs, list(settings), recipes, seeds)
        md, _ = write_tables(
            per_method,
            stem.parent / f"{stem.name}_per_method",
            header,
            digits=2,
            title="Per-method protocol: each method at the best member of its grid (validation)",
        )
        paths["per_method_md"] = md
    histories = {
        (r["setting"], r["recipe"], r["seed"]): r["history"] for r in runs if r.get("history")
    }
    if histories:  # the diagnose settings: one row per run and epoch
        paths["history_csv"] = atomic_write_text(
            stem.parent / f"{stem.name}_history.csv",
            history_csv(histories, ["setting", "recipe", "seed"]),
        )
    print(paths["md"].read_text(encoding="utf-8"))
    print(paths["pivot_md"].read_text(encoding="utf-8"))
    return {
        "rows": rows,
        "overall": overall,
        "runs": runs,
        "per_method": per_method,
        "paths": paths,
    }


if __name__ == "__main__":
    main()
