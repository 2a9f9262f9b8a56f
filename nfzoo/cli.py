"""What every nfzoo command-line tool shares: argument types with ranges, a parser whose errors
are one line, and the top-level handler that turns nfzoo's own errors into one line and a
non-zero exit instead of a traceback.

A tool's ``main(argv)`` returns its exit code through :func:`run_cli`::

    def main(argv=None) -> int:
        return run_cli(_run, argv, prog="nfzoo-validate")
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Callable, NoReturn, Sequence

from .errors import NfzooError

__all__ = ["ArgumentParser", "run_cli", "positive_int", "non_negative_int", "positive_float",
           "non_negative_float", "finite_float", "float_in", "existing_file", "existing_dir",
           "output_dir", "device"]

USAGE_ERROR = 2  # argparse's exit code for bad arguments
FAILURE = 1


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error: ``prog: error: <message> (see prog --help)``, exit 2.

    Help shows every flag's default.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def run_cli(run: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None, prog: str) -> int:
    """Call ``run(argv)`` and return its exit code; an :class:`NfzooError` (or a failed write,
    an ``OSError`` naming its file) becomes one line on stderr and exit 1, Ctrl-C exit 130."""
    try:
        return run(argv) or 0
    except SystemExit as e:  # argparse's --help and usage errors, already printed
        return e.code if isinstance(e.code, int) else (print(e.code, file=sys.stderr) or FAILURE)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except NfzooError as e:
        print(f"{prog}: error: {_one_line(str(e))}", file=sys.stderr)
        return FAILURE
    except OSError as e:
        if e.filename is None:
            raise
        print(f"{prog}: error: cannot write or read {e.filename}: {e.strerror or e}", file=sys.stderr)
        return FAILURE


def _one_line(message: str) -> str:
    return " ".join(message.split())


# ----------------------------------------------------------------------------- argument types
# Each raises argparse.ArgumentTypeError, which argparse reports as "argument --x: <message>".

def _number(kind: type, text: str) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _at_least(kind: type, text: str, low: int, strict: bool) -> int | float:
    value = _number(kind, text)
    if value < low or (strict and value == low):
        raise argparse.ArgumentTypeError(f"{value} must be {'greater than' if strict else 'at least'} {low}")
    return value


def positive_int(text: str) -> int:
    return _at_least(int, text, 1, strict=False)


def non_negative_int(text: str) -> int:
    return _at_least(int, text, 0, strict=False)


def finite_float(text: str) -> float:
    return _number(float, text)


def positive_float(text: str) -> float:
    return _at_least(float, text, 0, strict=True)


def non_negative_float(text: str) -> float:
    return _at_least(float, text, 0, strict=False)


def float_in(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
    """A float in ``[low, high]`` (``(`` / ``)`` where open)."""
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        value = _number(float, text)
        if value < low or value > high or (low_open and value == low) or (high_open and value == high):
            raise argparse.ArgumentTypeError(f"{value} is outside {interval}")
        return value
    parse.__name__ = f"float in {interval}"
    return parse


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a file" + ("" if path.exists() else " (it does not exist)"))
    return path


def existing_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a folder" + ("" if path.exists() else " (it does not exist)"))
    return path


def output_dir(text: str) -> Path:
    """A folder to write into: it may not exist yet, but must not be a file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder; name a folder to write into")
    return path


def device(text: str) -> str:
    """A torch device that this machine has: ``cpu``, ``cuda`` or ``cuda:N``."""
    import torch

    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return text
    if dev.type != "cuda":
        raise argparse.ArgumentTypeError(f"{text!r}: nfzoo runs on cpu or cuda")
    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r} was asked for but torch sees no GPU here; use --device cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} GPU(s), "
                                         f"numbered from 0")
    return text
