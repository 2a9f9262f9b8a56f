"""Running a command-line tool's ``main(argv)`` in-process and checking how it fails."""
from __future__ import annotations

from typing import Callable, Sequence


def assert_one_line_error(main: Callable[[Sequence[str]], int], argv: Sequence[str], capsys,
                          expect: str | None = None) -> str:
    """``main(argv)`` exits non-zero with exactly one line on stderr and no traceback; returns it.

    ``expect``: a fragment the line must contain (case-insensitive), e.g. the flag's name.
    """
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as e:  # a tool that lets argparse exit
        code = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code not in (0, None), f"{argv}: exit code {code}, stderr {err!r}"
    assert "Traceback" not in err, f"{argv}: {err}"
    assert len(lines) == 1, f"{argv}: expected one line on stderr, got {lines}"
    if expect is not None:
        assert expect.lower() in lines[0].lower(), f"{argv}: {expect!r} not in {lines[0]!r}"
    return lines[0]
