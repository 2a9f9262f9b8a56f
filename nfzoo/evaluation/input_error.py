"""The one exception type the harness raises for bad input; the CLI prints it and exits non-zero."""
from ..errors import NfzooError


class EvaluationError(NfzooError):
    """A problem with the user's input (data, model, options), with what to do about it."""
