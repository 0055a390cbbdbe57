"""Importing an adapter whose framework is missing raises an ImportError naming the extra."""

from __future__ import annotations

import subprocess
import sys

import pytest

CASES = [
    ("hug_plugins.ssl", "lightly", "lightly"),
    ("hug_plugins.continual", "avalanche", "avalanche"),
    ("hug_plugins.robustness", "torchattacks", "robustness"),
    ("hug_plugins.lightning", "lightning", "lightning"),
]


@pytest.mark.parametrize(("adapter", "framework", "extra"), CASES)
def test_missing_framework_names_the_extra(adapter: str, framework: str, extra: str) -> None:
    # A None entry in sys.modules makes `import framework` fail, as if it were not installed.
    probe = (
        f"import sys; sys.modules[{framework!r}] = None\n"
        f"try:\n    import {adapter}\nexcept ImportError as error:\n    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"pip install 'hug-plugins[{extra}]'" in result.stdout


def test_lazy_top_level_adapter_names_the_extra() -> None:
    probe = (
        "import sys; sys.modules['lightly'] = None\nimport hug_plugins\n"
        "try:\n    hug_plugins.HUGCriterion\nexcept ImportError as error:\n    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert "pip install 'hug-plugins[lightly]'" in result.stdout, result.stderr
