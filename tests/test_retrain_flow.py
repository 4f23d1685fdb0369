"""The retraining flow stops when DVC cannot sync with its remote, instead of logging and carrying on."""

from __future__ import annotations

import subprocess
import sys

from tests.project import make_project, start_prefect_server, venv_env, stop_process


def test_retraining_fails_when_dvc_push_fails(tmp_path):
    # no DVC remote is configured: `dvc pull` has nothing to fetch (no dvc.lock yet), `dvc push` fails
    project = make_project(tmp_path / "project")
    env, server = start_prefect_server(tmp_path)
    try:
        proc = subprocess.run([sys.executable, "-c", "from flows.pipeline import neat_retrain; neat_retrain('.')"],
                              cwd=project, env=venv_env({**env, "PYTHONPATH": str(project)}),
                              capture_output=True, text=True, timeout=600)
    finally:
        stop_process(server)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-3000:]
    assert "dvc push failed" in text and "no remote" in text.lower()
