"""Import rules of the package: the core math stays framework-free, modules keep their privates.

Core modules (the uniformity measures, the HUG losses and their fused node, proxies, collapse
metrics, value checks and the authors' reference) may import only the standard library, torch,
torchmetrics and other core modules; the framework adapters (lightly, Avalanche), evaluation,
training and job plumbing build on them. No module imports an underscore name from another.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hug_plugins"
CORE = (
    "kernels",
    "pair_sums",
    "uniformity",
    "terms",
    "losses",
    "fused",
    "proxies",
    "metrics",
    "_checks",
    "reference",
)
ALLOWED_IN_CORE = {"torch", "torchmetrics", "hug_plugins", "__future__"}


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every import in the file, nested ones included."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


@pytest.mark.parametrize("name", CORE)
def test_core_imports_only_torch_and_the_standard_library(name: str) -> None:
    for module, _ in _imports(PACKAGE / f"{name}.py"):
        top = module.split(".")[0]
        assert top in ALLOWED_IN_CORE or top in sys.stdlib_module_names, (name, module)
        if top == "hug_plugins":
            assert module.split(".")[1] in CORE, f"core module {name} imports {module}"


ADAPTERS = ("hug_plugins.ssl", "hug_plugins.simclr", "hug_plugins.continual")
FRAMEWORKS = ("lightly", "avalanche", "faiss", "torchattacks")


@pytest.mark.parametrize("path", sorted((PACKAGE / "train").glob("*.py")), ids=lambda p: p.name)
def test_training_loop_imports_no_framework_adapter(path: Path) -> None:
    for module, _ in _imports(path):
        assert module.split(".")[0] not in FRAMEWORKS
        assert not module.startswith(ADAPTERS), (path.name, module)


@pytest.mark.parametrize("path", sorted((PACKAGE / "data").glob("*.py")), ids=lambda p: p.name)
def test_data_layer_imports_only_itself_and_data_libraries(path: Path) -> None:
    for module, _ in _imports(path):
        top = module.split(".")[0]
        if top == "hug_plugins":
            assert module.startswith("hug_plugins.data"), (path.name, module)
        else:
            assert top not in FRAMEWORKS, (path.name, module)


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)}: from {module} import {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for module, names in _imports(path)
        if module.startswith("hug_plugins")
        for name in names
        if name.startswith("_")
    ]
    assert offenders == []


PLUMBING = ("config", "tables", "plots", "reports", "benchmark")
"""Job plumbing: presets, result tables, plots, reports, speed measurements (``io``, the atomic
file writes, serves every layer)."""


@pytest.mark.parametrize(
    "path",
    sorted(
        p
        for p in PACKAGE.rglob("*.py")
        if p.stem not in PLUMBING and p.parent.name != "__pycache__" and p.name != "__init__.py"
    ),
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_library_layers_import_no_job_plumbing(path: Path) -> None:
    for module, names in _imports(path):
        parts = module.split(".")
        if parts[0] != "hug_plugins":
            continue
        imported = parts[1:2] or names  # `from hug_plugins import x` imports the module x
        assert not set(imported) & set(PLUMBING), (path.name, module, names)
