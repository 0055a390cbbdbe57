"""Digits benchmark: cross-entropy versus MHE-, MHS- and MGD-HUG on scikit-learn's 8x8 digits.

Every method trains the same MLP (64 -> 128 -> 128 -> feature_dim) with the same trainer
settings and seeds; cross-entropy uses an ``nn.Linear`` head, the HUG variants a
:class:`~hug_plugins.proxies.ProxyHead` with the HUG loss of :mod:`hug_plugins.losses` on the
features and the proxies. For each method the job reports the test error (mean ± std over
seeds) and the final neural-collapse metrics on the training features: NC1, GNC2 (energy of
the normalized class means relative to the optimum, 1 = uniform), NC3 (distance between the
normalized classifier rows/proxies and the class means) and NC4 (rate at which the classifier
disagrees with the nearest class mean).

Usage::

    python integrations/digits.py                       # default preset (< 3 min on 2 cores)
    python integrations/digits.py --preset quick        # smoke run (CI)
    python integrations/digits.py seeds=[0,1,2,3,4] trainer.epochs=100 output_dir=/tmp/out
    torchrun --nproc_per_node=2 integrations/digits.py  # the same under DDP

Writes ``<output_dir>/<output_name>.md`` / ``.csv`` (summary) and ``..._runs.md`` / ``.csv``
(one row per method and seed).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.backbones import MLP
from harness.config import (
    check_choices,
    check_seeds,
    run_dependent_trainer_fields,
    run_job,
    to_dict,
)
from harness.data import DIGITS_NUM_CLASSES, DIGITS_NUM_FEATURES, load_digits_split
from harness.io import run_grid
from harness.models import FeatureClassifier, classifier_weight, make_head
from harness.objectives import CrossEntropyObjective, HUGObjective, Objective
from harness.tables import (
    COLLAPSE_COLUMNS,
    COLLAPSE_NOTE,
    standard_header_lines,
    summarize_runs,
    write_result_tables,
)
from harness.train import (
    Trainer,
    TrainerConfig,
    checkpoint_file,
    evaluate_classifier,
    evaluate_collapse,
    is_main_process,
    seed_everything,
    settings_tag,
    torch_threads,
)
from omegaconf import DictConfig
from torch import Tensor, nn

from hug_plugins.functional import preset_config
from hug_plugins.losses import HUGLoss
from hug_plugins.proxies import ProxyHead

TASK = "digits"

METHODS = {
    "ce": "CE",
    "default": "HUG (default)",
    "pure": "HUG (pure: no CE term)",
    "distance_pull": "HUG (pure, distance pull)",
    "mhe_sum": "MHE-HUG (paper)",
    "mhs_sum": "MHS-HUG (paper)",
    "mgd_sum": "MGD-HUG (paper)",
    "mhe": "MHE-HUG (mean form)",
    "mhs": "MHS-HUG (mean form)",
    "mgd": "MGD-HUG (mean form)",
}
"""Method keys accepted in ``methods`` and their display names."""

METRICS = {"test_error": "test_error", **COLLAPSE_COLUMNS}
"""Reported column -> key in the evaluation results (``unit_``: on ``x / ||x||``)."""


def build(method: str, seed: int, cfg: DictConfig) -> tuple[nn.Module, Objective, Tensor]:
    """Builds the seeded model (MLP ``64 -> hidden -> hidden -> feature_dim`` + head), its
    objective and a view of its classifier rows/proxies (the head is drawn first)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
    seed_everything(seed)
    dim, kind = int(cfg.model.feature_dim), "linear" if method == "ce" else "proxy"
    head = make_head(
        kind,
        DIGITS_NUM_CLASSES,
        dim,
        proxy_mode=cfg.proxy.mode,
        scale=float(cfg.proxy.scale),
        seed=seed,
    )
    model = FeatureClassifier(
        MLP(DIGITS_NUM_FEATURES, int(cfg.model.hidden)), head, feature_dim=dim
    )
    if method == "ce":
        return model, CrossEntropyObjective(), classifier_weight(model)
    assert isinstance(head, ProxyHead)
    return model, HUGObjective(HUGLoss.preset(method), head), head.proxies


def run_tag(method: str, cfg: DictConfig, trainer_cfg: TrainerConfig) -> str:
    """The settings tag of a run's checkpoint name: a hash of the HUG recipe the method resolves
    to, the model, the head, the split and the trainer but its epochs (a longer budget resumes
    the run), so that a changed recipe or default is trained anew, never silently reloaded."""
    trainer = run_dependent_trainer_fields(dataclasses.asdict(trainer_cfg), also_skip=["epochs"])
    recipe = None if method == "ce" else dataclasses.asdict(preset_config(method))
    return settings_tag(
        {
            "recipe": recipe,
            "model": to_dict(cfg.model),
            "proxy": to_dict(cfg.proxy),
            "test_fraction": float(cfg.test_fraction),
            "trainer": trainer,
        }
    )


def run_one(
    method: str, seed: int, cfg: DictConfig, trainer_cfg: TrainerConfig
) -> dict[str, float]:
    """Trains one (method, seed) and returns its test error and neural-collapse metrics."""
    train, test = load_digits_split(seed, test_fraction=float(cfg.test_fraction))
    model, objective, _ = build(method, seed, cfg)
    directory = str(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    tag = run_tag(method, cfg, trainer_cfg)
    checkpoint = checkpoint_file(directory, "digits", "mlp", method, seed, tag=tag)
    trainer = Trainer(
        dataclasses.replace(
            trainer_cfg, seed=seed, checkpoint_path=None if checkpoint is None else str(checkpoint)
        )
    )
    start = time.perf_counter()
    result = trainer.fit_classifier(model, train, objective)
    seconds = time.perf_counter() - start
    batch = int(cfg.metrics.batch_size)
    out = {
        "train_loss": result.final["loss"],
        "seconds": seconds,
        "epochs_trained": float(result.epochs - result.start_epoch),
    }
    out.update(evaluate_classifier(model, test, batch_size=batch, prefix="test_"))
    weight = classifier_weight(model)
    out.update(
        evaluate_collapse(
            model,
            train,
            DIGITS_NUM_CLASSES,
            classifier_weight=weight,
            batch_size=batch,
            spaces=("raw", "unit"),
        )
    )
    return out


def run(cfg: DictConfig, argv: Sequence[str]) -> dict[str, Any]:
    """Runs every (method, seed), writes the tables (rank 0) and returns rows and paths."""
    methods = check_choices("methods", cfg.methods, list(METHODS))
    seeds = check_seeds(cfg.seeds)
    trainer_cfg = TrainerConfig.from_mapping(to_dict(cfg.trainer))  # validated once, here
    started = time.perf_counter()
    show = bool(cfg.progress) and is_main_process()
    with torch_threads(cfg.num_threads):
        runs = [
            {"method": METHODS[method], "seed": seed, **run_one(method, seed, cfg, trainer_cfg)}
            for method, seed in run_grid(
                ["method", "seed"], methods, seeds, desc=TASK, enabled=show
            )
        ]
    total_seconds = time.perf_counter() - started

    rows = summarize_runs(
        runs, ["method"], METRICS, paired={"test_error": "vs_CE"}, baseline={"method": "CE"}
    )

    t = cfg.trainer
    header = [
        *standard_header_lines(argv),
        f"Settings: {len(seeds)} seeds {seeds}; {t.epochs} epochs, batch {t.batch_size}, "
        f"{t.optimizer} lr {t.lr} (weight decay {t.weight_decay}, {t.scheduler} schedule); "
        f"MLP {DIGITS_NUM_FEATURES}-{cfg.model.hidden}-{cfg.model.hidden}-"
        f"{cfg.model.feature_dim}; HUG heads: ProxyHead({cfg.proxy.mode}); "
        f"test fraction {cfg.test_fraction} (split seeded per run); "
        f"wall time {total_seconds:.1f} s.",
        "Columns: test error (fraction); vs_CE: paired per-seed test-error difference to CE "
        "(negative: better than CE); on the training features after the last epoch, "
        + COLLAPSE_NOTE
        + " Mean ± std (ddof = 1) over seeds.",
    ]
    stem = Path(str(cfg.output_dir)) / str(cfg.output_name)
    paths: dict[str, Path] = {}
    if is_main_process():
        digits = {
            "test_error": 4,
            "vs_CE": 4,
            "nc1": 3,
            "gnc2": 3,
            "nc3": 3,
            "nc4": 4,
            "nc1_unit": 3,
            "nc4_unit": 4,
        }
        paths = write_result_tables(
            rows,
            runs,
            stem,
            header,
            title="Digits: cross-entropy vs. HUG",
            digits=digits,
            run_digits=4,
            run_columns=["method", "seed", *METRICS.values(), "train_loss", "seconds"],
        )
        print(paths["md"].read_text(encoding="utf-8"))
    return {"rows": rows, "runs": runs, "paths": paths, "seconds": total_seconds}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point: ``[--preset NAME] [--data-root PATH] [key=value ...]``."""
    return run_job(TASK, run, ["integrations/digits.py"], argv, doc=__doc__, distributed=True)


if __name__ == "__main__":
    main()
