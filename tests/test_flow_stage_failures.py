"""How the flows classify a stage run through DVC: by the exit code `neat` records (neat.failures), never by
reading DVC's output."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import flows.pipeline as fp
from neat.failures import OUTCOME_ENV, is_bad_input
from neat.errors import DataError
from tests.conftest import ROOT


@pytest.fixture
def fake_dvc(tmp_path, monkeypatch):
    """Install a stand-in for `dvc` that runs `body` (a shell script) in place of `dvc repro`."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the `neat` it runs is this checkout's

    def install(body: str):
        script = tmp_path / "dvc"
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(0o755)
        monkeypatch.setattr(fp, "_bin", lambda name: str(script))

    return install


NEAT = f"{sys.executable} -m neat.cli"


def test_a_bad_input_failure_of_the_stage_is_not_retried(fake_dvc, tmp_path):
    fake_dvc(f"{NEAT} params --params {tmp_path}/missing.yaml\necho 'ERROR: failed to reproduce'; exit 255")
    with pytest.raises(fp.StageFailed) as info:
        fp.repro_stage("prepare", tmp_path, lambda line: None)
    assert info.value.transient is False
    assert "exit 2" in str(info.value) and "missing.yaml" in str(info.value)


def test_a_failure_around_the_stage_is_retried_whatever_the_output_says(fake_dvc, tmp_path):
    fake_dvc("echo 'neat: error: exited with 2'; exit 1")  # words alone classify nothing
    with pytest.raises(fp.StageFailed) as info:
        fp.repro_stage("prepare", tmp_path, lambda line: None)
    assert info.value.transient is True


def test_a_stage_dvc_did_not_run_was_reused(fake_dvc, tmp_path):
    fake_dvc("exit 0")
    assert fp.repro_stage("prepare", tmp_path, print) == {"stage": "prepare", "reused_from_cache": True}
    fake_dvc(f"{NEAT} params --params {ROOT}/params.yaml > /dev/null")
    assert fp.repro_stage("prepare", tmp_path, print) == {"stage": "prepare", "reused_from_cache": False}


def test_the_outcome_record_is_written_inside_the_project_and_removed(fake_dvc, tmp_path):
    """Not in /tmp: a worker killed mid-stage leaves its (empty) folder in the project's ignored .neat/."""
    fake_dvc(f'echo "record=${OUTCOME_ENV}"')
    lines = []
    fp.repro_stage("prepare", tmp_path, lines.append)
    record = Path(next(line for line in lines if line.startswith("record=")).removeprefix("record="))
    scratch = tmp_path / ".neat" / "outcomes"
    assert record.name == "outcome.json" and record.parent.parent == scratch
    assert list(scratch.iterdir()) == []  # removed once the stage ended


def test_an_in_process_stage_is_retried_unless_its_input_is_at_fault():
    assert is_bad_input(error=DataError("x.jsonl: line 3: not JSON")) and is_bad_input(2)
    assert not is_bad_input(error=RuntimeError("CUDA out of memory")) and not is_bad_input(3)
