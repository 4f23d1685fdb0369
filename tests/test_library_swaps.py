"""Hand-written helpers replaced by libraries keep their behaviour: percentiles (numpy), the checkout
lock (filelock)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from neat.data import percentiles
from neat.errors import NeatError
from neat.workspace import LOCK_NAME, project_lock, stage_lock


def test_percentiles_interpolate_linearly():
    assert percentiles(list(range(1, 11))) == {"p50": 5.5, "p90": 9.1, "p99": 9.9, "max": 10}
    assert percentiles([7]) == {"p50": 7.0, "p90": 7.0, "p99": 7.0, "max": 7}
    assert percentiles([]) == {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0}
    assert percentiles([3, 1, 2], qs=(25,)) == {"p25": 1.5, "max": 3}


def test_checkout_lock_across_processes(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom neat.workspace import project_lock\n"
        f"with project_lock({str(tmp_path)!r}):\n    print('held', flush=True)\n    time.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(NeatError, match="another neat run is using this checkout"):
            with stage_lock(tmp_path):
                pass
        started = time.monotonic()
        with pytest.raises(NeatError, match="holds the lock for over 1 s"):
            with project_lock(tmp_path, timeout=1):
                pass
        assert time.monotonic() - started >= 1
    finally:
        holder.kill()
        holder.wait()
    with stage_lock(tmp_path):  # free again once the holder is gone
        with stage_lock(tmp_path):  # a `neat` child of a lock holder runs under its lock
            pass
    assert (tmp_path / LOCK_NAME).exists()
