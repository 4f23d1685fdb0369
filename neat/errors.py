"""User-facing errors.

A `NeatError` carries a single line that names the offending file, row or key and says what is
wrong. The CLI prints it without a traceback (unless --debug) and exits non-zero.
"""

MAX_MESSAGE_CHARS = 600  # an error line quotes at most this much (an alias bomb must not print 52 MB)


def cap(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` on one line, cut to `limit` characters with a note of how much was left out."""
    text = str(text)
    head = " ".join(text[: limit * 4].split())
    if len(head) <= limit and len(text) <= limit * 4:
        return head
    return head[:limit] + f"… ({len(text) - limit} more characters)"


class NeatError(Exception):
    """An error caused by the user's input (data, params, model reference), not by a bug."""

    def __init__(self, message: str):
        super().__init__(cap(message))  # always exactly one line, never a flood


class ConfigError(NeatError):
    """params.yaml (or an override) is missing, malformed or out of range."""


class DataError(NeatError):
    """A data file is missing, unreadable or yields no usable row."""


class ModelError(NeatError):
    """A model reference cannot be resolved or loaded."""


class TrainingError(NeatError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""
