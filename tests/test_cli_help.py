"""What a new user types first: `neat --version`, `neat <stage> --help`, `python -m flows.pipeline --help`."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import pytest

from neat.stages import STAGES
from tests.conftest import ROOT
from tests.project import venv_env


def test_version():
    proc = subprocess.run(["neat", "--version"], env=venv_env(), capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"neat {version('neat-align')}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_each_stage_help_says_what_the_stage_does(name, capsys):
    from neat.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert STAGES[name].help in out
    assert "Stage:" in out  # the entry point's own docstring: what it reads and writes


def test_flows_module_help_prints_help_and_starts_no_run(tmp_path):
    env = venv_env({"PREFECT_HOME": str(tmp_path / "prefect-home"), "PYTHONPATH": str(ROOT)})
    proc = subprocess.run([sys.executable, "-m", "flows.pipeline", "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: python -m flows.pipeline") and "mark-crashed" in proc.stdout
    assert "flow run" not in proc.stderr.lower()
    run_help = subprocess.run([sys.executable, "-m", "flows.pipeline", "run", "--help"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
    assert run_help.returncode == 0 and "--set" in run_help.stdout
