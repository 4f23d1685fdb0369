"""`neat`'s messages go through `logging` (logger `neat.*`) to stderr; stdout keeps the JSON summaries.

`neat --quiet` shows warnings and errors only, and no progress bars; `--log-level` picks any level.
"""

from __future__ import annotations

import logging
import os
import sys

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class _Stderr(logging.StreamHandler):
    """Writes to sys.stderr as it is when a record is emitted (a test's capture, a redirected stream)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure(level: str = "INFO", quiet: bool = False) -> None:
    """Send the `neat` loggers' records at `level` (WARNING when `quiet`) to stderr, message only."""
    logger = logging.getLogger("neat")
    for handler in [h for h in logger.handlers if isinstance(h, _Stderr)]:
        logger.removeHandler(handler)
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel("WARNING" if quiet else level)
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"  # neat.progress draws no bars (nor do the stages this run starts)
