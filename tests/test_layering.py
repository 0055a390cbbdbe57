"""Import rules: the library never imports the lab, its core needs only torch, adapters are lazy.

Layers, bottom up: ``hug_plugins.functional`` (pure math) <- the losses, proxies, metrics and
helpers <- the framework adapters (``ssl``, ``continual``, ``robustness``, ``ncm``) <- the lab
(``integrations/harness``) <- the scripts (``integrations/*.py``). No module imports an
underscore name from another.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hug_plugins"
HARNESS = ROOT / "integrations" / "harness"

REQUIRED = {"torch", "torchmetrics", "numpy"}
"""The library's only required dependencies (pyproject ``dependencies``)."""
FRAMEWORKS = {"lightly", "avalanche", "faiss", "torchattacks", "lightning", "pytorch_lightning"}
LAB_ONLY = {"harness", "omegaconf", "matplotlib", "torchvision", "sklearn", "tqdm", "psutil"}
ADAPTERS = {
    "ssl.py": {"lightly"},
    "continual": {"avalanche"},
    "robustness.py": {"torchattacks"},
    "lightning.py": {"lightning"},
    "ncm": {"faiss", "threadpoolctl"},
}
"""Adapter module or package -> the optional packages it may import."""


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every import in the file, nested ones included."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def _library_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _allowed_optional(path: Path) -> set[str]:
    rel = path.relative_to(PACKAGE).parts
    return ADAPTERS.get(rel[0], set())


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_library_imports_only_its_dependencies_and_its_adapter_framework(path: Path) -> None:
    # typing_extensions: Unpack for the HUG keywords, imported under TYPE_CHECKING only.
    allowed = (
        REQUIRED | {"hug_plugins", "__future__", "typing_extensions"} | _allowed_optional(path)
    )
    for module, _ in _imports(path):
        top = module.split(".")[0]
        assert top in allowed or top in sys.stdlib_module_names, (path.name, module)
        assert top not in LAB_ONLY, f"the library imports the lab's {module}"


@pytest.mark.parametrize(
    "path",
    sorted((PACKAGE / "functional").glob("*.py")),
    ids=lambda p: p.name,
)
def test_functional_layer_imports_only_torch_and_itself(path: Path) -> None:
    for module, _ in _imports(path):
        top = module.split(".")[0]
        assert (
            top in {"torch", "__future__"}
            or top in sys.stdlib_module_names
            or (module.startswith(("hug_plugins.functional", "hug_plugins._checks")))
        ), (path.name, module)


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = [
        f"{path}: from {module} import {name}"
        for root in (PACKAGE, HARNESS)
        for path in sorted(root.rglob("*.py"))
        for module, names in _imports(path)
        if module.startswith(("hug_plugins", "harness"))
        for name in names
        if name.startswith("_")
    ]
    assert offenders == []


@pytest.mark.parametrize("path", sorted((HARNESS / "train").glob("*.py")), ids=lambda p: p.name)
def test_training_loop_imports_no_framework_adapter(path: Path) -> None:
    for module, _ in _imports(path):
        assert module.split(".")[0] not in FRAMEWORKS, (path.name, module)
        assert not module.startswith(("hug_plugins.ssl", "hug_plugins.continual")), module


def test_import_hug_plugins_loads_no_framework_and_no_lab_package() -> None:
    probe = (
        "import sys, hug_plugins, hug_plugins.functional, hug_plugins.losses, "
        "hug_plugins.proxies\n"
        "heavy = {'lightly', 'avalanche', 'faiss', 'torchattacks', 'matplotlib', 'torchvision',"
        " 'omegaconf', 'lightning', 'harness', 'torchmetrics'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "[]"
