"""Every code block of README.md and docs/ runs here, as a user would paste it.

A block is a fenced block with a language. ``bash`` and ``python`` blocks run (bash with
``-euo pipefail``) in a scratch folder that links to the checkout's files, with the project's
virtual environment first on ``PATH``, offline, and with caches in the scratch folder. HTML
comments on the lines right above a block's fence adjust it:

- ``<!-- ci-skip: reason -->``: not run here (ImageNet, a GPU, the network); the test reports
  the block as skipped with the reason (``pytest -rs``). A block too slow for CI says
  ``slow: <what>, covered by tests/<file>::<test>``, naming the test that runs the same thing.
- ``<!-- ci-append: ARGS -->``: ARGS are appended to each command of the block (before its
  ``# comment``; not to the file steps ``mkdir``, ``ln``, ``cp``, ``cd``, ``export``), to run it at
  a tiny size (argparse takes the last value of a repeated flag).
- ``<!-- ci-env: NAME=VALUE ... -->``: environment variables for the block.

Other languages (``text``, ``toml``, ...) show files or output and are not run; a fence with no
language is refused, so that no command hides in an unmarked block.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUNNABLE = ("bash", "python")
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w+-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*(?P<kind>ci-skip|ci-append|ci-env):\s*(?P<value>.*?)\s*-->\s*$")
TIMEOUT_S = 300
FILE_STEPS = ("mkdir", "ln", "cp", "cd", "export")  # ci-append leaves these alone


@dataclass
class Block:
    doc: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    skip: str | None = None
    append: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def parse_blocks(doc: Path) -> list[Block]:
    lines = doc.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"{doc}:{i + 1}: a code block that is never closed"
        indent = len(m["indent"])
        block = Block(doc, i + 1, m["lang"], "\n".join(line[indent:] for line in lines[i + 1:end]) + "\n")
        j = i - 1
        while j >= 0 and (marker := MARKER.match(lines[j])):
            if marker["kind"] == "ci-skip":
                block.skip = marker["value"]
            elif marker["kind"] == "ci-append":
                block.append = marker["value"]
            else:
                block.env.update(item.split("=", 1) for item in shlex.split(marker["value"]))
            j -= 1
        blocks.append(block)
        i = end + 1
    return blocks


ALL_BLOCKS = [b for doc in DOCS for b in parse_blocks(doc)]


def _with_args(line: str, extra: str) -> str:
    """``line`` with ``extra`` at the end of its command, before a trailing ``# comment``."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and line[i - 1].isspace():
            return f"{line[:i].rstrip()} {extra}  {line[i:]}"
    return f"{line} {extra}"


def _commands_with(code: str, extra: str) -> str:
    """``extra`` appended to every command of a bash block but its file steps (continuation lines
    joined first)."""
    if not extra:
        return code
    joined = re.sub(r"\s*\\\n\s*", " ", code)
    commands = [(line, line.split()[0]) for line in joined.splitlines() if line.strip()]
    return "\n".join(line if first.startswith("#") or first in FILE_STEPS else _with_args(line, extra)
                     for line, first in commands) + "\n"


def _scratch(tmp_path: Path) -> Path:
    """A folder holding links to the checkout's top-level entries, so that a block's outputs land
    here and the documented relative paths (examples/, weights/, Makefile) resolve."""
    work = tmp_path / "work"
    work.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in (".git", "runs"):
            (work / entry.name).symlink_to(entry)
    return work


def test_every_block_names_its_language():
    unnamed = [b.name for b in ALL_BLOCKS if not b.lang]
    assert not unnamed, f"code blocks without a language (say bash, python, text, ...): {unnamed}"


def test_the_docs_have_runnable_blocks():
    assert sum(b.lang in RUNNABLE for b in ALL_BLOCKS) >= 10


SKIPPED = [b for b in ALL_BLOCKS if b.lang in RUNNABLE and b.skip is not None]
PLACEHOLDERS = {"", "todo", "tbd", "fixme", "skip", "skipped", "reason", "n/a", "none", "...", "wip"}
TEST_NAMED = re.compile(r"(?P<file>[\w/]+/test_\w+\.py)(?:::(?P<test>\w+))?")


def test_every_skipped_block_says_why():
    """Each skipped block gives a reason (what it needs that CI lacks: ImageNet, a GPU, the Hub,
    ...), a slow one names the test that runs the same thing, and every test a reason names exists."""
    print(f"{len(SKIPPED)} of {sum(b.lang in RUNNABLE for b in ALL_BLOCKS)} bash/python blocks skipped")
    vague = [b.name for b in SKIPPED if b.skip.strip(" .:").lower() in PLACEHOLDERS or len(b.skip.split()) < 3]
    assert not vague, f"ci-skip without a reason (say what the block needs that CI lacks): {vague}"
    for block in SKIPPED:
        named = list(TEST_NAMED.finditer(block.skip))
        if block.skip.startswith("slow:"):
            assert any(m["test"] for m in named), f"{block.name}: a slow block says 'covered by tests/<file>::<test>'"
        for m in named:
            source = ROOT / m["file"]
            assert source.is_file(), f"{block.name}: {m['file']} does not exist"
            assert m["test"] is None or f"def {m['test']}(" in source.read_text(), f"{block.name}: no {m[0]}"


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.lang in RUNNABLE], ids=lambda b: b.name)
def test_doc_block_runs(block: Block, tmp_path: Path):
    if block.skip is not None:
        pytest.skip(f"{block.name}: {block.skip}")
    work = _scratch(tmp_path)
    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
           "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch"),
           "MPLBACKEND": "Agg", **block.env}
    if block.lang == "python":
        script = tmp_path / "block.py"
        script.write_text(block.code)
        cmd = [sys.executable, str(script)]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", _commands_with(block.code, block.append)]
    result = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, (f"{block.name} failed (exit {result.returncode}):\n{block.code}\n"
                                    f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}")


def test_ci_append_goes_before_a_trailing_comment_and_not_into_file_steps():
    code = "mkdir -p d && ln -s a d/b\n# a note\nrun --x 'a # b' \\\n    --y 1   # the comment\nrun\n"
    assert _commands_with(code, "--tiny") == (
        "mkdir -p d && ln -s a d/b\n# a note\nrun --x 'a # b' --y 1 --tiny  # the comment\nrun --tiny\n")
