"""User-facing errors.

A `NeatError` carries a single line that names the offending file, row or key and says what is
wrong. The CLI prints it without a traceback (unless --debug) and exits non-zero.
"""


class NeatError(Exception):
    """An error caused by the user's input (data, params, model reference), not by a bug."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always exactly one line


class ConfigError(NeatError):
    """params.yaml (or an override) is missing, malformed or out of range."""


class DataError(NeatError):
    """A data file is missing, unreadable or yields no usable row."""


class ModelError(NeatError):
    """A model reference cannot be resolved or loaded."""
