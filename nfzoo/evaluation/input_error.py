"""The one exception type the harness raises for bad input; the CLI prints it and exits non-zero."""


class EvaluationError(Exception):
    """A problem with the user's input (data, model, options), with what to do about it."""
