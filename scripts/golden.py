"""Rewrite the golden outputs in tests/golden/ from the current code.

    .venv/bin/python scripts/golden.py

Run it only when an output change is intended (and say why in the commit): the golden
files are what tests/test_golden.py holds every later change to. See tests/golden_util.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import golden_util  # noqa: E402


def main() -> int:
    for capture, view in golden_util.cases():
        text = golden_util.render(capture, view)
        golden_util.write(capture, view, text)
        print(f"{golden_util.golden_path(capture, view).name}: {len(text.splitlines())} lines")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
