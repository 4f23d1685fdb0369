"""Progress bars that stay off where they would flood a log.

A bar redraws itself many times a second; on a terminal that is one line, in a file or a Prefect
flow-run log it is thousands. Every stage's bars come from here: off when `TQDM_DISABLE` is set
(tqdm's own switch, which the flows set for their subprocesses) or when stderr is not a terminal,
whatever the caller asked for.
"""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm as _tqdm

_FALSE = ("", "0", "false", "no", "off")


def bars_off() -> bool:
    """True when progress bars must not be drawn: TQDM_DISABLE set, or stderr not a terminal."""
    setting = os.environ.get("TQDM_DISABLE")
    if setting is not None:
        return setting.strip().lower() not in _FALSE
    try:
        return not sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stderr
        return True


class tqdm(_tqdm):  # noqa: N801 - a drop-in for tqdm.auto.tqdm
    def __init__(self, *args, disable: bool | None = False, **kwargs):
        super().__init__(*args, disable=bool(disable) or bars_off(), **kwargs)
