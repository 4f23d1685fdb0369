"""Progress bars: off when not on a terminal or when TQDM_DISABLE is set, whatever the stage asked for."""

from __future__ import annotations

import subprocess
import sys

from neat.progress import bars_off, tqdm

DRAW = ("from neat.steering import tqdm\n"
        "for _ in tqdm(range(50), desc='expand round 1', disable=False, mininterval=0): pass\n")


def test_stage_bars_stay_out_of_a_log_file():
    # stderr is a pipe (a log file, a flow-run log): no bar, although the stage passed disable=False
    proc = subprocess.run([sys.executable, "-c", DRAW], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "expand round 1" not in proc.stderr


def test_tqdm_disable_wins_and_a_terminal_gets_bars(monkeypatch):
    class Terminal:
        def isatty(self):
            return True

        def write(self, text):
            return len(text)

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stderr", Terminal())
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert not bars_off() and not tqdm(range(3), disable=False).disable
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert bars_off() and tqdm(range(3), disable=False).disable
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert not bars_off()
    assert tqdm(range(3), disable=True).disable  # a caller's own `progress=False` still holds


def test_every_stage_draws_through_neat_progress():
    import neat.evaluate  # noqa: F401 - imports its tqdm lazily; checked through the source below
    import neat.reward
    import neat.steering  # the expand stage's bars
    import neat.training.trainer
    from tests.conftest import ROOT

    assert neat.steering.tqdm is neat.reward.tqdm is neat.training.trainer.tqdm is tqdm
    assert "from neat.progress import tqdm" in (ROOT / "neat" / "evaluate.py").read_text()
