"""Refreshes the tables of the docs' benchmark pages from the jobs' result files.

A page marks a table it takes from a job's output with::

    <!-- table: results/continual/splitmnist.md -->
    | ... the table ... |
    <!-- end table -->

For every marker whose file exists (relative to the repository), the lines between the
markers become the table rows of that file (its lines starting with ``|``); markers whose file
is absent are left as they are. Rerun a job, then this script, and the page shows the job's
new table without hand-copied numbers.

Usage::

    python integrations/update_docs.py            # rewrites docs/**/*.md in place
    python integrations/update_docs.py --check    # exit 1 if a page would change
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- table: (?P<path>\S+) -->\n(?P<body>.*?)<!-- end table -->", re.S)


def refresh(text: str, root: Path = ROOT) -> str:
    """``text`` with every marked table replaced by the rows of its result file.

    Example:
        >>> refresh("<!-- table: missing.md -->\\n| a |\\n<!-- end table -->")
        '<!-- table: missing.md -->\\n| a |\\n<!-- end table -->'
    """

    def replace(match: re.Match[str]) -> str:
        source = root / match.group("path")
        if not source.is_file():
            return match.group(0)
        rows = [
            line for line in source.read_text(encoding="utf-8").splitlines() if line.startswith("|")
        ]
        return f"<!-- table: {match.group('path')} -->\n" + "\n".join(rows) + "\n<!-- end table -->"

    return MARKER.sub(replace, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report pages that would change")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = parser.parse_args(argv)
    changed = []
    for page in sorted(args.docs.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        new = refresh(text)
        if new != text:
            changed.append(page)
            if not args.check:
                tmp = page.with_suffix(".md.tmp")
                tmp.write_text(new, encoding="utf-8")
                tmp.replace(page)  # atomic
    for page in changed:
        print(f"{'would update' if args.check else 'updated'} {page.relative_to(ROOT)}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
