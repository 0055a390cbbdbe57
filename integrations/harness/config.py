"""YAML configuration for the jobs in ``integrations/``: presets plus ``key=value`` overrides.

A job ``<task>`` keeps its presets in ``configs/<task>/<preset>.yaml``. A run loads one preset
(by name, or by a path to any YAML file) and merges command-line overrides written as OmegaConf
dot-list entries (``trainer.epochs=5``, ``seeds=[0,1,2]``). The preset fixes the set of keys:
an override naming a key the preset does not have is rejected with a ``ValueError``, so a typo
cannot silently be ignored.

Example:
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "demo").mkdir()
    >>> _ = (root / "demo" / "default.yaml").write_text("epochs: 3\\nlr: 0.1\\n")
    >>> cfg = load_config("demo", overrides=["epochs=5"], root=root)
    >>> cfg.epochs, cfg.lr
    (5, 0.1)
    >>> cfg = parse_cli(["--preset", "default", "lr=0.5"], "demo", root=root)
    >>> cfg.lr
    0.5
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from harness.data import PIXEL_DATASETS, PixelDatasetInfo, load_pixel_datasets
from harness.train.checkpoints import settings_tag
from harness.train.config import TrainerConfig
from hug_plugins.losses import preset_config

__all__ = [
    "CONFIG_DIR_ENV",
    "DEFAULT_PRESET",
    "available_presets",
    "check_choices",
    "check_seeds",
    "default_config_root",
    "load_config",
    "load_job_pixel_data",
    "parse_cli",
    "pixel_fit_options",
    "resolve_preset_path",
    "run_job",
    "set_values",
    "to_dict",
]

T = TypeVar("T")

DEFAULT_PRESET = "default"
"""Preset used when none is named."""

CONFIG_DIR_ENV = "HUG_PLUGINS_CONFIG_DIR"
"""Environment variable that, when set, replaces the default ``configs/`` directory."""

_YAML_SUFFIXES = (".yaml", ".yml")


def default_config_root() -> Path:
    """Returns the directory that holds ``<task>/<preset>.yaml``.

    This is ``$HUG_PLUGINS_CONFIG_DIR`` when set, else the ``configs/`` directory of the
    repository this package lives in.
    """
    env = os.environ.get(CONFIG_DIR_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "configs"


def _root(root: str | os.PathLike[str] | None) -> Path:
    return default_config_root() if root is None else Path(root)


def available_presets(task: str, root: str | os.PathLike[str] | None = None) -> list[str]:
    """Lists the preset names of ``task`` (the YAML files in ``<root>/<task>/``), sorted.

    Args:
        task: The job name, e.g. ``"digits"``.
        root: The configs directory; defaults to :func:`default_config_root`.

    Returns:
        Preset names without extension; empty if the task has no config directory.
    """
    directory = _root(root) / task
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.iterdir() if p.suffix in _YAML_SUFFIXES and p.is_file())


def _looks_like_path(preset: str) -> bool:
    return preset.endswith(_YAML_SUFFIXES) or "/" in preset or os.sep in preset


def resolve_preset_path(
    task: str, preset: str = DEFAULT_PRESET, root: str | os.PathLike[str] | None = None
) -> Path:
    """Finds the YAML file of a preset.

    Args:
        task: The job name, e.g. ``"digits"``.
        preset: A preset name (looked up as ``<root>/<task>/<preset>.yaml`` or ``.yml``) or a path
            to a YAML file (anything ending in ``.yaml``/``.yml`` or containing a ``/``).
        root: The configs directory; defaults to :func:`default_config_root`.

    Returns:
        The path of the preset file.

    Raises:
        ValueError: If the file does not exist; the message lists the available presets.
    """
    if not task or not isinstance(task, str):
        raise ValueError(f"task must be a non-empty string, got {task!r}")
    if not preset or not isinstance(preset, str):
        raise ValueError(f"preset must be a non-empty string, got {preset!r}")
    if _looks_like_path(preset):
        path = Path(preset)
        if path.is_file():
            return path
        raise ValueError(f"config file {preset!r} does not exist")
    directory = _root(root) / task
    for suffix in _YAML_SUFFIXES:
        path = directory / f"{preset}{suffix}"
        if path.is_file():
            return path
    names = available_presets(task, root)
    listing = ", ".join(names) if names else f"none (no YAML files in {str(directory)!r})"
    raise ValueError(f"unknown preset {preset!r} for task {task!r}; available presets: {listing}")


def load_config(
    task: str,
    preset: str = DEFAULT_PRESET,
    overrides: Sequence[str] = (),
    *,
    root: str | os.PathLike[str] | None = None,
) -> DictConfig:
    """Loads a preset and applies ``key=value`` overrides.

    The returned config is in OmegaConf struct mode (reading or writing an unknown key raises)
    and has its interpolations resolved.

    Args:
        task: The job name, e.g. ``"digits"``.
        preset: A preset name or a path to a YAML file (see :func:`resolve_preset_path`).
        overrides: Dot-list entries such as ``"trainer.epochs=5"`` or ``"seeds=[0,1]"``; a
            leading ``+`` (``"+hug.loss.intra=squared_distance"``) adds a key that the preset
            does not list, inside an existing section.
        root: The configs directory; defaults to :func:`default_config_root`.

    Returns:
        The merged configuration.

    Raises:
        ValueError: If the preset is missing (the message lists the available ones), the file is
            not a YAML mapping, an override is not of the form ``key=value``, names an unknown
            key, or has a value of the wrong type, or a ``+key`` exists already or has no
            parent section.
    """
    path = resolve_preset_path(task, preset, root)
    try:
        base = OmegaConf.load(path)
    except (OmegaConfBaseException, OSError, ValueError) as exc:
        raise ValueError(f"could not read config {str(path)!r}: {exc}") from None
    except Exception as exc:  # yaml.YAMLError and friends
        raise ValueError(f"could not parse config {str(path)!r}: {exc}") from None
    if not isinstance(base, DictConfig):
        raise ValueError(f"config {str(path)!r} must be a YAML mapping, got a list")
    overrides = list(overrides)
    for item in overrides:
        if not isinstance(item, str) or "=" not in item or item.lstrip("+").startswith("="):
            raise ValueError(f"override {item!r} must have the form key=value or +key=value")
    additions = [item[1:] for item in overrides if item.startswith("+")]
    overrides = [item for item in overrides if not item.startswith("+")]
    OmegaConf.set_struct(base, True)
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        node = OmegaConf.select(base, key, default=None, throw_on_missing=False)
        value = OmegaConf.select(OmegaConf.from_dotlist([item]), key, default=None)
        if isinstance(node, DictConfig) and not isinstance(value, DictConfig):
            raise ValueError(
                f"override {item!r} would replace the section {key!r} with a single value; "
                f"set its keys instead (e.g. {key}.<name>=...)"
            )
    try:
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as exc:
        keys = ", ".join(str(k) for k in base)
        msg = str(exc).splitlines()[0]
        full_key = getattr(exc, "full_key", None)
        if isinstance(exc, ConfigKeyError) and full_key:
            msg = f"unknown config key {full_key!r}"
        raise ValueError(
            f"invalid override for preset {str(path)!r}: {msg} (top-level keys: {keys})"
        ) from None
    if not isinstance(merged, DictConfig):  # pragma: no cover - merge of two dicts is a dict
        raise ValueError(f"config {str(path)!r} must be a YAML mapping")
    for item in additions:
        _add_key(merged, item, path)
    try:
        OmegaConf.resolve(merged)
    except OmegaConfBaseException as exc:
        raise ValueError(f"could not resolve config {str(path)!r}: {exc}") from None
    OmegaConf.set_struct(merged, True)
    return merged


def _add_key(cfg: DictConfig, item: str, path: Path) -> None:
    """Applies one ``+key=value`` override: adds a key the preset does not list."""
    key = item.split("=", 1)[0].strip()
    parent_key, _, name = key.rpartition(".")
    parent = cfg if not parent_key else OmegaConf.select(cfg, parent_key, default=None)
    if not isinstance(parent, DictConfig):
        raise ValueError(
            f"override '+{item}': {parent_key!r} is not a section of preset {str(path)!r}"
        )
    if name in parent:
        raise ValueError(f"override '+{item}': {key!r} already exists; drop the '+' to set it")
    value = OmegaConf.select(OmegaConf.from_dotlist([item]), key, default=None)
    with open_dict(parent):
        parent[name] = value


def check_seeds(values: Sequence[Any]) -> list[int]:
    """Returns a job's ``seeds`` as ints; they must be a non-empty list of distinct integers.

    Args:
        values: The configured seeds.

    Returns:
        The seeds as a list of ``int``.

    Raises:
        ValueError: If the list is empty, holds a non-integer or repeats a seed.

    Example:
        >>> check_seeds([0, 1, 2])
        [0, 1, 2]
    """
    seeds = list(values)
    if not seeds or any(isinstance(s, bool) or int(s) != s for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of distinct integers, got {seeds}")
    out = [int(s) for s in seeds]
    if len(set(out)) != len(out):
        raise ValueError(f"seeds must be a non-empty list of distinct integers, got {seeds}")
    return out


def check_choices(name: str, values: Sequence[Any], allowed: Sequence[str]) -> list[str]:
    """Returns ``values`` as strings; they must be a non-empty subset of ``allowed``.

    Args:
        name: The config key, used in the error message (e.g. ``"methods"``).
        values: The configured values.
        allowed: The valid choices.

    Returns:
        The values as a list of ``str``, in their order.

    Raises:
        ValueError: If the list is empty or names a value not in ``allowed``.

    Example:
        >>> check_choices("methods", ["ce", "hug"], ["ce", "hug", "naive"])
        ['ce', 'hug']
    """
    out = [str(v) for v in values]
    unknown = [v for v in out if v not in allowed]
    if unknown or not out:
        raise ValueError(
            f"{name} must be a non-empty subset of {sorted(allowed)}, got {out}"
            + (f" (unknown: {unknown})" if unknown else "")
        )
    return out


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    """Converts a config (or sub-config) to plain Python dicts and lists.

    Args:
        cfg: An OmegaConf mapping.

    Returns:
        The resolved content as a ``dict``.
    """
    container = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(container, dict):
        raise ValueError("to_dict() needs a mapping config")
    return {str(k): v for k, v in container.items()}


def parse_cli(
    argv: Sequence[str] | None,
    task: str,
    *,
    root: str | os.PathLike[str] | None = None,
    description: str | None = None,
) -> DictConfig:
    """Parses a job's command line: ``[--preset NAME|PATH] [--data-root PATH] [key=value ...]``.

    ``key=value`` sets a key the preset has; ``+key=value`` (Hydra's spelling) adds one it does
    not list, e.g. ``+hug.loss.intra=squared_distance``; the consumer validates it.

    Args:
        argv: The arguments without the program name; ``None`` reads ``sys.argv[1:]``.
        task: The job name, e.g. ``"digits"``; presets live in ``<root>/<task>/``.
        root: The configs directory; defaults to :func:`default_config_root`.
        description: Text for ``--help``.

    Returns:
        The merged configuration (see :func:`load_config`).

    Raises:
        ValueError: For a missing preset or a bad override (see :func:`load_config`).
        SystemExit: For ``--help`` or malformed options (argparse behaviour).
    """
    names = available_presets(task, root)
    parser = argparse.ArgumentParser(
        prog=f"integrations/{task}.py",
        description=description,
        epilog=f"available presets: {', '.join(names) if names else 'none'}",
    )
    parser.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        help=f"preset name in configs/{task}/ or a path to a YAML file (default: %(default)s)",
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help="dataset folder; shorthand for the override data.root=PATH",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="OmegaConf dot-list overrides; +key=value adds a key the preset does not list",
    )
    args = parser.parse_args(None if argv is None else list(argv))
    overrides = list(args.overrides)
    if args.data_root is not None:
        overrides.append(f"data.root={args.data_root}")
    return load_config(task, args.preset, overrides, root=root)


def set_values(cfg: DictConfig | None) -> dict[str, Any]:
    """The keys of a config section whose value is not null (``None`` or empty: ``{}``).

    A job's override sections (e.g. ``hug.loss``) use null for "keep the library's default";
    this keeps only the values a preset or the command line actually set.

    Example:
        >>> set_values(OmegaConf.create({"alpha": 2.0, "beta": None}))
        {'alpha': 2.0}
    """
    if not cfg:
        return {}
    return {k: v for k, v in to_dict(cfg).items() if v is not None}


def pixel_fit_options(cfg: DictConfig) -> dict[str, Any]:
    """The keyword arguments of :func:`harness.train.fit_pixel_classifier` in a job config.

    Reads the schema the robustness and long-tail jobs share: ``model.{arch, hidden,
    feature_dim, convs_per_stage}``, ``hug.{preset, proxy_mode, scale, loss}``, ``trainer``,
    ``data.augment``, ``eval_only`` and ``progress`` (a line per epoch; ``convs_per_stage``
    defaults to 2 when absent).

    Example:
        >>> cfg = OmegaConf.create({
        ...     "model": {"arch": "mlp", "hidden": 8, "feature_dim": 4},
        ...     "hug": {"preset": "default", "proxy_mode": "learnable", "scale": 16.0,
        ...             "loss": {"alpha": None}},
        ...     "trainer": {"epochs": 1}, "data": {"augment": False}, "eval_only": False})
        >>> opts = pixel_fit_options(cfg)
        >>> opts["model_options"]["convs_per_stage"], opts["trainer_cfg"].epochs
        (2, 1)
    """
    model, hug = cfg.model, cfg.hug
    return {
        "model_options": {
            "arch": str(model.arch),
            "hidden": int(model.hidden),
            "feature_dim": int(model.feature_dim),
            "convs_per_stage": int(model.get("convs_per_stage", 2)),
            "proxy_mode": str(hug.proxy_mode),
            "scale": float(hug.scale),
        },
        "hug_preset": str(hug.preset),
        "hug_overrides": set_values(hug.loss),
        "trainer_cfg": TrainerConfig.from_mapping(to_dict(cfg.trainer)),  # validated here, once
        "augment": bool(cfg.data.augment),
        "eval_only": bool(cfg.eval_only),
        "progress": bool(cfg.get("progress", False)),
    }


RUN_INDEPENDENT_TRAINER_FIELDS = (
    "seed",
    "checkpoint_path",
    "progress",
    "device",
    "num_workers",
    "eval_every",
)
"""TrainerConfig fields left out of a run's settings tag: set per run (seed, checkpoint) or
without effect on the trained weights' recipe (where and how verbosely it runs)."""


def run_dependent_trainer_fields(
    trainer: Mapping[str, Any], also_skip: Sequence[str] = ()
) -> dict[str, Any]:
    """``trainer`` (TrainerConfig fields) without :data:`RUN_INDEPENDENT_TRAINER_FIELDS` and
    ``also_skip``: the part of a run's settings tag that the trainer contributes.

    Example:
        >>> run_dependent_trainer_fields({"lr": 0.1, "seed": 3, "epochs": 2}, also_skip=["epochs"])
        {'lr': 0.1}
    """
    skip = {*RUN_INDEPENDENT_TRAINER_FIELDS, *also_skip}
    return {k: v for k, v in trainer.items() if k not in skip}


def pixel_run_tag(cfg: DictConfig, extra_keys: Sequence[str] = ()) -> str:
    """The settings tag (:func:`harness.train.settings_tag`) of a robustness / long-tail
    job's runs: a hash of everything the trained weights depend on besides the method, the seed
    and the long-tail ratio (which the checkpoint name carries), so that a changed recipe is
    trained anew instead of silently reloaded from another recipe's checkpoint.

    Covers the :func:`pixel_fit_options` (model, the HUG recipe the preset and its overrides
    resolve to, so that a new default recipe is a new run, trainer but its
    :data:`RUN_INDEPENDENT_TRAINER_FIELDS`, augmentation), ``data`` but its ``root`` (any path,
    same data) and the top-level ``extra_keys`` (the long-tail construction).

    Example:
        >>> base = {
        ...     "model": {"arch": "mlp", "hidden": 8, "feature_dim": 4},
        ...     "hug": {"preset": "default", "proxy_mode": "learnable", "scale": 16.0,
        ...             "loss": {"alpha": None}},
        ...     "trainer": {"epochs": 1}, "data": {"name": "digits", "root": None,
        ...     "augment": False}, "eval_only": False}
        >>> tag = pixel_run_tag(OmegaConf.create(base))
        >>> moved = OmegaConf.merge(base, {"data": {"root": "/x"}, "trainer": {"device": "cpu"}})
        >>> pixel_run_tag(moved) == tag
        True
        >>> pixel_run_tag(OmegaConf.merge(base, {"trainer": {"epochs": 2}})) == tag
        False
    """
    options = pixel_fit_options(cfg)
    trainer = run_dependent_trainer_fields(dataclasses.asdict(options["trainer_cfg"]))
    job = to_dict(cfg)
    data = {k: v for k, v in job["data"].items() if k != "root"}
    return settings_tag(
        {
            "model": options["model_options"],
            "hug_recipe": dataclasses.asdict(
                preset_config(options["hug_preset"], **(options["hug_overrides"] or {}))
            ),
            "augment": options["augment"],
            "trainer": trainer,
            "data": data,
            **{key: job[key] for key in extra_keys},
        }
    )


def load_job_pixel_data(cfg: DictConfig) -> tuple[Any, Any, PixelDatasetInfo]:
    """``(train, test, info)`` of a job's ``data.{name, root, split_seed, test_fraction}`` as
    [0, 1] pixel tensors (:func:`harness.data.load_pixel_datasets`).

    Raises:
        ValueError: If ``data.name`` is not a pixel dataset.
    """
    d = cfg.data
    if str(d.name) not in PIXEL_DATASETS:
        raise ValueError(f"data.name must be one of {list(PIXEL_DATASETS)}, got {d.name!r}")
    return load_pixel_datasets(
        str(d.name),
        None if d.root is None else str(d.root),
        split_seed=int(d.split_seed),
        test_fraction=float(d.test_fraction),
    )


def run_job(
    task: str,
    run: Callable[[DictConfig, list[str]], T],
    command: Sequence[str],
    argv: Sequence[str] | None = None,
    *,
    doc: str | None = None,
    distributed: bool = False,
) -> T:
    """The entry point of a job script: parse ``argv`` into the task's config, then ``run``.

    Args:
        task: The config folder (``configs/<task>/``).
        run: ``run(cfg, command_line)``; the command line (``command`` + ``argv``) goes into the
            result tables' header.
        command: How the script is launched, e.g. ``["integrations/longtail.py"]``.
        argv: Arguments without the program name (``None``: ``sys.argv[1:]``).
        doc: The script's docstring (its first line is the ``--help`` description).
        distributed: Join the ``torchrun`` process group first, when launched by torchrun.

    Returns:
        What ``run`` returns.
    """
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if distributed:
        from harness.train import init_distributed_from_env

        init_distributed_from_env()
    cfg = parse_cli(args, task, description=doc.splitlines()[0] if doc else None)
    return run(cfg, [*command, *args])
