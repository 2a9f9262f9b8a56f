"""nfzoo.cli: the argument types every command shares, and the one-line top-level handler."""
import argparse
import errno

import pytest
from hypothesis import given, strategies as st

from cli_helpers import assert_one_line_error
from nfzoo.cli import (ArgumentParser, float_in, non_negative_float, non_negative_int, positive_float, positive_int,
                       run_cli)
from nfzoo.errors import NfzooError


@given(st.integers(-10**6, 10**6))
def test_integer_types_keep_a_zero_and_refuse_below_their_floor(n):
    for parse, floor in ((positive_int, 1), (non_negative_int, 0)):
        if n >= floor:
            assert parse(str(n)) == n
        else:
            with pytest.raises(argparse.ArgumentTypeError, match=f"at least {floor}"):
                parse(str(n))


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_float_types_refuse_non_finite_values_and_below_their_floor(x):
    for parse, ok in ((positive_float, x > 0), (non_negative_float, x >= 0), (float_in(0, 1, high_open=True), 0 <= x < 1)):
        if ok and x == x and abs(x) != float("inf"):
            assert parse(repr(x)) == x
        else:
            with pytest.raises(argparse.ArgumentTypeError):
                parse(repr(x))


@pytest.mark.parametrize("text", ["", "1.5", "one", "0x10"])
def test_an_integer_type_names_what_it_got(text):
    with pytest.raises(argparse.ArgumentTypeError, match="not an integer"):
        positive_int(text)


def _tool(raise_: BaseException | None):
    def run(argv):
        parser = ArgumentParser(prog="tool")
        parser.add_argument("--n", type=positive_int, default=1)
        parser.parse_args(argv)
        if raise_ is not None:
            raise raise_
        return 0
    return lambda argv: run_cli(run, argv, prog="tool")


@pytest.mark.parametrize("error, argv, fragment", [
    (None, ["--n", "0"], "argument --n: 0 must be at least 1 (see tool --help)"),
    (None, ["--bogus"], "unrecognized arguments"),
    (NfzooError("the data folder is empty;\n  add images"), [], "tool: error: the data folder is empty; add images"),
    (OSError(errno.EACCES, "Permission denied", "/x/y"), [], "cannot write or read /x/y: Permission denied"),
])
def test_errors_are_one_line_and_a_non_zero_exit(error, argv, fragment, capsys):
    line = assert_one_line_error(_tool(error), argv, capsys)
    assert fragment in line


def test_usage_errors_exit_2_and_failures_exit_1(capsys):
    assert _tool(None)(["--n", "-3"]) == 2
    assert _tool(NfzooError("x"))([]) == 1
    assert _tool(None)([]) == 0


def test_an_unexpected_error_is_not_hidden():
    with pytest.raises(ZeroDivisionError):
        _tool(ZeroDivisionError("a bug"))([])
