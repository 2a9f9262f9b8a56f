"""Checks of the model arguments every zoo family takes, with messages that say what is allowed."""
from __future__ import annotations

import numbers
from typing import Any, Callable, Mapping

__all__ = ["check_model_args", "OUTPUT_STRIDES"]

OUTPUT_STRIDES = (8, 16, 32)


def _integer(low: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= low


def _probability(v: Any) -> bool:
    return v is None or (isinstance(v, numbers.Real) and not isinstance(v, bool) and 0 <= v < 1)


_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "num_classes": (_integer(0), "an integer >= 0 (0 builds no classifier)"),
    "in_chans": (_integer(1), "an integer >= 1 (3 for RGB images)"),
    "output_stride": (lambda v: v in OUTPUT_STRIDES, "8, 16 or 32 (stages past it are dilated)"),
    "drop_rate": (_probability, "a probability in [0, 1)"),
    "drop_path_rate": (_probability, "a probability in [0, 1) (the rate of the deepest block)"),
}


def check_model_args(model: str, args: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` for the first of ``args`` (num_classes, in_chans, output_stride,
    drop_rate, drop_path_rate; others are not looked at) that ``model`` cannot be built with."""
    for key, value in args.items():
        if key in _RULES and not _RULES[key][0](value):
            raise ValueError(f"{model}: {key}={value!r} is not allowed; it must be {_RULES[key][1]}")
