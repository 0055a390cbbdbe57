"""Imports of the optional frameworks behind the adapters, with an error that names the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require_extra"]


def require_extra(module: str, extra: str, adapter: str) -> ModuleType:
    """Imports ``module`` or raises an ``ImportError`` that says which extra to install.

    Args:
        module: The framework's import name, e.g. ``"avalanche"``.
        extra: The hug-plugins extra that installs it, e.g. ``"avalanche"``.
        adapter: The adapter that needs it, named in the message.

    Raises:
        ImportError: When ``module`` cannot be imported.

    Examples:
        >>> require_extra("math", "none", "hug_plugins.example").__name__
        'math'
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{adapter} needs the {module!r} package, which is not installed: "
            f"pip install 'hug-plugins[{extra}]'"
        ) from error
