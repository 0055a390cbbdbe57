"""Tests of harness.config: presets, overrides and the CLI helper."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness.config import (
    CONFIG_DIR_ENV,
    available_presets,
    check_choices,
    check_seeds,
    default_config_root,
    load_config,
    parse_cli,
    resolve_preset_path,
    to_dict,
)

DEFAULT_YAML = """
seeds: [0, 1, 2]
output_dir: results
trainer:
  epochs: 3
  lr: 0.1
  checkpoint_path: null
model:
  hidden: 128
  name: mlp-${model.hidden}
"""


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "default.yaml").write_text(DEFAULT_YAML)
    (tmp_path / "demo" / "quick.yml").write_text("seeds: [0]\ntrainer:\n  epochs: 1\n")
    (tmp_path / "demo" / "notes.txt").write_text("not a preset")
    return tmp_path


def test_available_presets(root: Path) -> None:
    assert available_presets("demo", root) == ["default", "quick"]
    assert available_presets("missing", root) == []


def test_load_default_and_overrides(root: Path) -> None:
    cfg = load_config("demo", root=root)
    assert cfg.trainer.epochs == 3 and list(cfg.seeds) == [0, 1, 2]
    assert cfg.model.name == "mlp-128"  # interpolation resolved
    cfg = load_config(
        "demo",
        overrides=["trainer.epochs=7", "seeds=[4,5]", "model.hidden=64", "output_dir=/tmp/x"],
        root=root,
    )
    assert cfg.trainer.epochs == 7 and list(cfg.seeds) == [4, 5]
    assert cfg.model.hidden == 64 and cfg.output_dir == "/tmp/x"
    # null-valued keys can be set
    cfg = load_config("demo", overrides=["trainer.checkpoint_path=ck.pt"], root=root)
    assert cfg.trainer.checkpoint_path == "ck.pt"


def test_struct_mode_rejects_unknown_keys(root: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown config key 'trainer\.epoch'"):
        load_config("demo", overrides=["trainer.epoch=2"], root=root)
    with pytest.raises(ValueError, match="unknown config key 'sed'"):
        load_config("demo", overrides=["sed=1"], root=root)
    cfg = load_config("demo", root=root)
    with pytest.raises(Exception):  # noqa: B017 - reading an unknown key raises too
        _ = cfg.not_there


def test_plus_override_adds_a_key(root: Path) -> None:
    cfg = load_config(
        "demo", overrides=["+trainer.nesterov=true", "+model.act=gelu", "+extra=3"], root=root
    )
    assert cfg.trainer.nesterov is True and cfg.model.act == "gelu" and cfg.extra == 3
    assert cfg.trainer.epochs == 3  # the rest of the section is untouched
    with pytest.raises(Exception):  # noqa: B017 - struct mode is back on afterwards
        _ = cfg.trainer.not_there
    cfg = parse_cli(["+trainer.momentum=0.9", "trainer.epochs=2"], "demo", root=root)
    assert cfg.trainer.momentum == 0.9 and cfg.trainer.epochs == 2
    with pytest.raises(ValueError, match="already exists; drop the"):
        load_config("demo", overrides=["+trainer.epochs=2"], root=root)
    with pytest.raises(ValueError, match="is not a section"):
        load_config("demo", overrides=["+nowhere.x=1"], root=root)
    with pytest.raises(ValueError, match="is not a section"):
        load_config("demo", overrides=["+output_dir.x=1"], root=root)


@pytest.mark.parametrize("bad", ["epochs", "=3", "trainer=5", "+=3", "+epochs"])
def test_malformed_overrides(root: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="override"):
        load_config("demo", overrides=[bad], root=root)


def test_missing_preset_lists_available(root: Path) -> None:
    with pytest.raises(
        ValueError, match=r"unknown preset 'fast'.*available presets: default, quick"
    ):
        load_config("demo", "fast", root=root)
    with pytest.raises(ValueError, match="available presets: none"):
        load_config("nothing", root=root)
    with pytest.raises(ValueError, match="does not exist"):
        load_config("demo", str(root / "nope.yaml"), root=root)


def test_preset_by_path(root: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere.yaml"
    other.write_text("a: 1\n")
    assert resolve_preset_path("demo", str(other), root) == other
    assert load_config("demo", str(other), ["a=2"], root=root).a == 2
    assert resolve_preset_path("demo", "quick", root).name == "quick.yml"


def test_non_mapping_and_broken_yaml(root: Path) -> None:
    (root / "demo" / "list.yaml").write_text("- 1\n- 2\n")
    (root / "demo" / "broken.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config("demo", "list", root=root)
    with pytest.raises(ValueError, match="could not"):
        load_config("demo", "broken", root=root)


def test_parse_cli(root: Path) -> None:
    cfg = parse_cli(["--preset", "quick", "trainer.epochs=2"], "demo", root=root)
    assert cfg.trainer.epochs == 2 and list(cfg.seeds) == [0]
    cfg = parse_cli([], "demo", root=root)
    assert cfg.trainer.epochs == 3
    with pytest.raises(ValueError, match="unknown config key"):
        parse_cli(["bogus=1"], "demo", root=root)
    with pytest.raises(SystemExit):
        parse_cli(["--no-such-flag"], "demo", root=root)


def test_parse_cli_help_lists_presets(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_cli(["--help"], "demo", root=root)
    assert "available presets: default, quick" in capsys.readouterr().out


def test_to_dict_and_env_root(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = to_dict(load_config("demo", root=root))
    assert data["trainer"] == {"epochs": 3, "lr": 0.1, "checkpoint_path": None}
    assert isinstance(data["seeds"], list)
    monkeypatch.setenv(CONFIG_DIR_ENV, str(root))
    assert default_config_root() == root
    assert load_config("demo", "quick").trainer.epochs == 1
    monkeypatch.delenv(CONFIG_DIR_ENV)
    assert default_config_root().name == "configs"


def test_check_seeds() -> None:
    assert check_seeds([3, 1]) == [3, 1]
    assert check_seeds((0,)) == [0]
    for bad in ([], [1, 1], [0.5], [True]):
        with pytest.raises(ValueError, match="distinct integers"):
            check_seeds(bad)


def test_check_choices() -> None:
    assert check_choices("methods", ["hug", "ce"], ["ce", "hug"]) == ["hug", "ce"]
    with pytest.raises(ValueError, match=r"methods must be .*unknown: \['mse'\]"):
        check_choices("methods", ["ce", "mse"], ["ce", "hug"])
    with pytest.raises(ValueError, match="non-empty"):
        check_choices("methods", [], ["ce", "hug"])
