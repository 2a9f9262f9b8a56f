"""docs/security.md names the tests behind each guarantee; every test it names exists."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "security.md"
# `path/to/test_x.py::test_name` or, after one of those in the same cell, `::test_name`
REFERENCE = re.compile(r"`(?P<file>[\w/]+\.py)?::(?P<test>test_\w+)`")


def named_tests(text: str) -> list[tuple[str, str]]:
    named = []
    for cell in re.split(r"\||\n", text):
        current = None
        for m in REFERENCE.finditer(cell):
            current = m["file"] or current
            assert current is not None, f"{m[0]} in docs/security.md follows no test file"
            named.append((current, m["test"]))
    return named


def test_every_named_test_exists():
    named = named_tests(PAGE.read_text())
    assert len(named) >= 40
    missing = []
    for file, test in named:
        path = ROOT / file
        functions = ({n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}
                     if path.is_file() else set())
        if test not in functions:
            missing.append(f"{file}::{test}")
    assert not missing, f"docs/security.md names tests that do not exist: {missing}"
