"""End-to-end test of integrations/calibrate.py on a tiny digits budget (in-process)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from harness.config import available_presets

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def job() -> ModuleType:
    return importlib.import_module("integrations.calibrate")


def _preset(tmp_path: Path, recipes: dict[str, dict[str, object]]) -> Path:
    """The quick preset with 1 epoch per setting, one seed and the given recipes."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ROOT / "configs" / "calibrate" / "quick.yaml")
    for setting in cfg.settings:
        setting.trainer.epochs = 1
    cfg.seeds = [0]
    cfg.recipes = recipes
    cfg.output_dir = str(tmp_path / "out")
    path = tmp_path / "tiny.yaml"
    OmegaConf.save(cfg, path)
    return path


RECIPES: dict[str, dict[str, object]] = {
    "ce": {},
    "default": {"preset": "default"},
    "sum_hybrid": {"preset": "mhe_sum", "ce_weight": 1.0},
}


def test_sweep_writes_paired_tables_and_resumes(job: ModuleType, tmp_path: Path) -> None:
    args = ["--preset", str(_preset(tmp_path, RECIPES))]
    result = job.main(args)
    runs = result["runs"]
    assert len(runs) == 2 * 3  # settings x recipes x seeds
    log = tmp_path / "out" / "calibrate_quick_runs.jsonl"
    assert len(log.read_text().splitlines()) == 6
    overall = {row["recipe"]: row for row in result["overall"]}
    assert set(overall) == {"default", "sum_hybrid"}  # CE is the baseline, not a row
    for row in result["rows"]:
        if row["recipe"] == "ce":
            assert row["vs_CE_pp"] is None
        else:
            mine = [
                r for r in runs if r["setting"] == row["setting"] and r["recipe"] == row["recipe"]
            ]
            ce = [r for r in runs if r["setting"] == row["setting"] and r["recipe"] == "ce"]
            expected = 100.0 * (mine[0]["val_error"] - ce[0]["val_error"])
            assert row["vs_CE_pp"].mean == pytest.approx(expected)
    pivot = (tmp_path / "out" / "calibrate_quick_pivot.md").read_text()
    assert "| sum_hybrid |" in pivot and "digits-sgd-b32" in pivot
    again = job.main(args)  # every run is in the log: nothing retrains
    assert len(log.read_text().splitlines()) == 6
    assert [r["val_error"] for r in again["runs"]] == [r["val_error"] for r in runs]


def test_a_redefined_recipe_is_a_new_run(job: ModuleType, tmp_path: Path) -> None:
    """Finished runs are reused by what the recipe resolves to, not by its name: redefining
    ``default`` (or changing what ``HUGConfig()`` means) retrains it; the table shows the new one.
    """
    from omegaconf import OmegaConf

    path = _preset(tmp_path, {"ce": {}, "default": {"preset": "default"}})
    cfg = OmegaConf.load(path)
    cfg.settings = [cfg.settings[0]]
    OmegaConf.save(cfg, path)
    first = job.main(["--preset", str(path)])["runs"]
    log = tmp_path / "out" / "calibrate_quick_runs.jsonl"
    assert len(log.read_text().splitlines()) == 2
    setting, recipes = cfg.settings[0], cfg.recipes
    tag = job.run_tag(setting, recipes.default, cfg)
    assert tag == job.run_tag(setting, OmegaConf.create({"preset": "default", "beta": 8.0}), cfg)
    assert tag != job.run_tag(setting, OmegaConf.create({"preset": "default", "beta": 16.0}), cfg)
    assert tag != job.run_tag(setting, OmegaConf.create({"preset": "distance_pull"}), cfg)
    cfg.recipes.default = {"preset": "default", "beta": 16.0}
    OmegaConf.save(cfg, path)
    second = job.main(["--preset", str(path)])["runs"]
    assert len(log.read_text().splitlines()) == 3  # CE reused, the redefined recipe retrained
    by_recipe = {r["recipe"]: r for r in second}
    assert len(second) == 2 and by_recipe["ce"] == next(r for r in first if r["recipe"] == "ce")
    assert by_recipe["default"]["tag"] != tag


def test_validation_split_comes_from_the_training_set(job: ModuleType) -> None:
    from harness.config import load_config
    from harness.data import load_image_dataset

    cfg = load_config("calibrate", "quick")
    train, val, _, _ = job.setting_data(cfg.settings[0], None)
    full_train, test, _ = load_image_dataset("digits")
    assert len(train) + len(val) == len(full_train)
    assert abs(len(val) - int(cfg.settings[0].val_size)) <= 5  # stratified rounding per class
    flat = {tuple(x.flatten().tolist()) for x in test.images}
    overlap = sum(tuple(x.flatten().tolist()) in flat for x in val.images)
    train_flat = {tuple(x.flatten().tolist()) for x in full_train.images}
    assert all(tuple(x.flatten().tolist()) in train_flat for x in val.images)
    assert overlap <= 2  # digits has a few exact duplicate images across its own split


def test_recipes_need_the_ce_baseline(job: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'ce'"):
        job.main(["--preset", str(_preset(tmp_path, {"hug": {"preset": "default"}}))])


def test_remedy_recipes_and_per_epoch_diagnostics(job: ModuleType, tmp_path: Path) -> None:
    """The fit study's recipe fields (ETF proxies, BatchNorm neck, CE anneal, per-recipe learning
    rate) train, and a ``diagnose`` setting records the fit measurements after every epoch."""
    from omegaconf import OmegaConf

    recipes: dict[str, dict[str, object]] = {
        "ce": {"trainer": {"lr": 0.02}},
        "etf_bn": {"preset": "default", "proxy_init": "etf", "neck_norm": "batchnorm"},
        "anneal": {"preset": "default", "ce_anneal": 0.5},
    }
    path = _preset(tmp_path, recipes)
    cfg = OmegaConf.load(path)
    cfg.settings = [cfg.settings[0]]
    cfg.settings[0].trainer.epochs = 2
    cfg.settings[0].diagnose = 200
    cfg.checkpoint_dir = str(tmp_path / "ckpt")
    OmegaConf.save(cfg, path)
    runs = {r["recipe"]: r for r in job.main(["--preset", str(path)])["runs"]}
    assert set(runs) == set(recipes)
    for run in runs.values():
        history = run["history"]
        assert [h["epoch"] for h in history] == [1, 2]
        for entry in history:
            assert 0.0 <= entry["train_error"] <= 1.0 and 0.0 <= entry["val_error"] <= 1.0
            assert entry["feature_norm"] > 0 and entry["grad_neck"] > 0
            assert -1.0 <= entry["proxy_max_cosine"] <= 1.0
    history = (tmp_path / "out" / "calibrate_quick_history.csv").read_text().splitlines()
    assert history[0].startswith("setting,recipe,seed,epoch,") and len(history) == 1 + 3 * 2
    setting = cfg.settings[0]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        f"digits-sgd-b32_{name}_0_{job.run_tag(setting, cfg.recipes[name], cfg)}.pt"
        for name in ("anneal", "ce", "etf_bn")
    ]
    with pytest.raises(ValueError, match="proxy_init"):
        job.run_one(
            cfg.settings[0], OmegaConf.create({"preset": "default", "proxy_init": "x"}), 0, cfg
        )


@pytest.mark.parametrize("preset", available_presets("calibrate"))
def test_every_preset_recipe_builds_and_every_shortlist_names_a_recipe(
    job: ModuleType, preset: str
) -> None:
    """A typo in a preset's recipe (an unknown HUGLoss field, a shortlist entry that names no
    recipe) fails here, not hours into a sweep."""
    from harness.config import load_config

    from hug_plugins import HUGLoss

    cfg = load_config("calibrate", preset)
    for name, recipe in cfg.recipes.items():
        fields = job.hug_fields(recipe)
        if recipe.get("preset") is None:
            assert not fields, f"{name}: a CE recipe takes no HUGLoss fields, got {fields}"
        else:
            assert isinstance(HUGLoss.preset(str(recipe.preset), **fields), HUGLoss)
    for setting in cfg.settings:
        assert set(setting.get("recipes") or []) <= set(cfg.recipes), setting.name


def test_per_method_protocol_scores_each_method_at_its_best_grid_member(job: ModuleType) -> None:
    from omegaconf import OmegaConf

    recipes = OmegaConf.create(
        {
            "ce": {"family": "ce"},
            "ce_lr0.2": {"family": "ce", "trainer": {"lr": 0.2}},
            "hug": {"preset": "default", "family": "hug"},
            "hug_lr0.2": {"preset": "default", "family": "hug", "trainer": {"lr": 0.2}},
            "hug_lr0.5": {"preset": "default", "family": "hug", "trainer": {"lr": 0.5}},
            "alone": {"preset": "mhe_sum"},
        }
    )
    errors = {  # (recipe, seed) -> validation error; hug_lr0.5 ran one seed only
        ("ce", 0): 0.30, ("ce", 1): 0.32, ("ce_lr0.2", 0): 0.26, ("ce_lr0.2", 1): 0.28,
        ("hug", 0): 0.27, ("hug", 1): 0.29, ("hug_lr0.2", 0): 0.29, ("hug_lr0.2", 1): 0.31,
        ("hug_lr0.5", 0): 0.10, ("alone", 0): 0.40, ("alone", 1): 0.42,
    }  # fmt: skip
    runs = [
        {"setting": "s", "recipe": r, "seed": s, "val_error": e} for (r, s), e in errors.items()
    ]
    rows = {r["method"]: r for r in job.per_method_rows(runs, ["s"], dict(recipes), [0, 1])}
    assert set(rows) == {"ce", "hug", "alone"}
    assert rows["ce"]["best_member"] == "ce_lr0.2" and rows["ce"]["vs_CE_best_pp"] is None
    # hug_lr0.5 is better but incomplete (one seed): not eligible, and counted as not run
    assert rows["hug"]["best_member"] == "hug" and rows["hug"]["grid_run"] == "2 of 3"
    assert rows["hug"]["val_error_%"].mean == pytest.approx(28.0)
    assert rows["hug"]["vs_CE_best_pp"].mean == pytest.approx(1.0)  # paired to ce_lr0.2
    assert rows["alone"]["vs_CE_best_pp"].mean == pytest.approx(14.0)
    # the family field names no HUG keyword and does not change what a run is
    setting = OmegaConf.create({"name": "s", "dataset": "digits", "trainer": {"epochs": 1}})
    cfg = OmegaConf.create({"trainer": {"lr": 0.05}, "model": {"feature_dim": 8}})
    assert job.run_tag(setting, recipes.hug, cfg) == job.run_tag(
        setting, OmegaConf.create({"preset": "default"}), cfg
    )
