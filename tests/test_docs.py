"""The docs: the table refresher, and docstrings that serve the API (short module docstrings,
no run figures or dates)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_refresh_replaces_marked_tables_from_their_result_file(tmp_path: Path) -> None:
    from update_docs import refresh

    (tmp_path / "out.md").write_text("# Title\n\ntext\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    page = "before\n<!-- table: out.md -->\n| old |\n<!-- end table -->\nafter\n"
    new = refresh(page, tmp_path)
    table = "| a | b |\n|---|---|\n| 1 | 2 |\n"
    assert new == f"before\n<!-- table: out.md -->\n{table}<!-- end table -->\nafter\n"
    assert refresh(new, tmp_path) == new
    missing = "<!-- table: none.md -->\n| kept |\n<!-- end table -->"
    assert refresh(missing, tmp_path) == missing


MODULES = sorted(p for p in (ROOT / "hug_plugins").rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_docstrings_are_short_and_carry_no_run_figures(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    doc = ast.get_docstring(tree) or ""
    assert len(doc.splitlines()) <= 25, f"{path.name}: move the essay to docs/"
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            text = ast.get_docstring(node) or ""
            assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), (path.name, "a date")
            assert "README" not in text, (path.name, "docs, not the README")
