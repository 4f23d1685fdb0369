"""Interruptions (issue 7): SIGKILL during training, expansion and scoring; a non-finite loss.

* `neat train --resume` after SIGKILLs at random points (seeded; checkpoint_every=1, so kills land
  between checkpoints and during them) ends with the same weights as an uninterrupted run.
* `neat expand` killed midway continues from its completed shards ("resuming: k of n shards done")
  and writes the same candidates as an uninterrupted run; so does `neat score` after a crash;
  shards of other inputs or params are never reused.
* A NaN loss stops `neat train` with exit 2 and one line, keeping the last good checkpoint, from
  which `--resume` continues.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from neat.cli import main
from neat.config import load_params
from neat.workspace import set_params_in_file
from tests.conftest import ROOT
from tests.project import TINY, venv_env

BASE = TINY | {
    "reward.model": "builtin:tiny-random",  # a fast reward model: these tests are about state, not quality
    "data.max_train_prompts": 4,
    "expand.shard_size": 1,
    "reward.shard_size": 4,
    "train.rounds": 2,
    "train.batch_size": 1,
    "train.checkpoint_every": 1,
}


def cli(params: Path, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*argv, "--params", str(params)])
    return code, out.getvalue(), err.getvalue()


def project_copy(src: Path, dest: Path) -> Path:
    """A copy of a prepared project directory whose params point at the copy's own out/ and checkpoints/."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("checkpoints"))
    set_params_in_file(dest / "params.yaml", {"paths.out": str(dest / "out"), "paths.checkpoints": str(dest / "checkpoints")})
    return dest / "params.yaml"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """params.yaml (tiny, absolute paths) with prepare and train-rm done."""
    root = tmp_path_factory.mktemp("interrupt") / "base"
    root.mkdir()
    shutil.copy2(ROOT / "params.yaml", root / "params.yaml")
    set_params_in_file(root / "params.yaml", BASE | {
        "paths.data": str(ROOT / "data/demo/hh_demo.jsonl"), "paths.out": str(root / "out"),
        "paths.checkpoints": str(root / "checkpoints"), "paths.cache": os.environ["NEAT_CACHE_DIR"]})
    for stage in ("prepare", "train-rm"):
        assert cli(root / "params.yaml", stage)[0] == 0
    return root


@pytest.fixture(scope="module")
def scored(prepared, tmp_path_factory) -> Path:
    """The prepared project plus expand and score (the inputs of `neat train`)."""
    params = project_copy(prepared, tmp_path_factory.mktemp("interrupt") / "scored")
    for stage in ("expand", "score"):
        assert cli(params, stage)[0] == 0
    return params.parent


def rows_of(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def popen_neat(params: Path, *argv: str) -> subprocess.Popen:
    return subprocess.Popen(["neat", *argv, "--params", str(params)], env=venv_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120, poll: float = 0.01) -> bool:
    """True once `predicate()` holds; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return predicate()
        time.sleep(poll)
    raise AssertionError("timed out")


# ---------------------------------------------------------------- training: SIGKILL, then --resume


def _state_step(state_dir: Path) -> int:
    try:
        return json.loads((state_dir / "state.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return 0


def _policy_weights(out: Path) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = {}
    for f in sorted((out / "policy").glob("*.safetensors")):
        weights |= load_file(str(f))
    return weights


TRAIN_TRIALS = [2, 1]  # kills per trial: 3 SIGKILLs over 2 trials (a resumed run killed again, then a single kill)


def test_sigkill_training_then_resume_gives_identical_weights(scored, tmp_path):
    from neat.training.checkpoint import state_dir_for

    ref_params = project_copy(scored, tmp_path / "reference")
    ref = subprocess.run(["neat", "train", "--resume", "--params", str(ref_params)], env=venv_env(),
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    reference = _policy_weights(ref_params.parent / "out")
    total = json.loads((ref_params.parent / "out/metrics/train.json").read_text())["steps"]
    assert total == 8  # 4 prompts, one per step, 2 rounds
    step_seconds = json.loads((ref_params.parent / "out/metrics/train.json").read_text())["seconds"] / total

    rng = random.Random(7)
    report = []
    for trial, n_kills in enumerate(TRAIN_TRIALS):
        params = project_copy(scored, tmp_path / f"trial{trial}")
        state = state_dir_for(load_params(params))
        kills = []
        for _ in range(n_kills):
            first = _state_step(state) + 1  # a step this run will checkpoint, well before the last
            if first > total - 3:  # an earlier kill landed late: too few steps left to kill safely mid-run
                break
            target = rng.randint(first, total - 3)
            # a random moment: mid-step, mid-checkpoint, between. step_seconds includes loading and the
            # online-curve answers, so it overstates one step: a quarter of it keeps the kill before the end
            extra = rng.uniform(0.0, 0.25) * step_seconds
            proc = popen_neat(params, "train", "--resume")
            reached = wait_for(lambda: _state_step(state) >= target, proc)
            assert reached and proc.poll() is None, "training finished before the kill"
            time.sleep(extra)
            kill(proc)
            kills.append(_state_step(state))
            assert not (params.parent / "out/policy").exists()
        final = subprocess.run(["neat", "train", "--resume", "--params", str(params)], env=venv_env(),
                               capture_output=True, text=True, timeout=600)
        assert final.returncode == 0, final.stderr[-2000:]
        got = _policy_weights(params.parent / "out")
        assert got.keys() == reference.keys()
        equal = all(torch.equal(got[k], reference[k]) for k in reference)
        report.append({"trial": trial, "killed_at_checkpointed_step": kills, "identical": equal})
        assert equal, report
        assert (params.parent / "out/train/log.csv").read_text().count("\n") == total + 1
    print("\nkill/resume trials:", json.dumps(report))


# ---------------------------------------------------------------- expansion: SIGKILL, then rerun


def _shard_files(params: Path, stage: str) -> list[Path]:
    from neat.io import work_dir_for

    p = load_params(params)
    root = work_dir_for(p.paths.checkpoints, p.paths.out, stage)
    return sorted(root.glob("*/shard-*.json")) if root.exists() else []


def test_sigkill_expansion_resumes_from_completed_shards(prepared, tmp_path):
    slow = {"expand.max_new_tokens": 24}  # each one-prompt shard takes a moment, so the kill lands midway
    ref_params = project_copy(prepared, tmp_path / "reference")
    set_params_in_file(ref_params, slow)
    code, _, err = cli(ref_params, "expand")
    assert code == 0 and "resuming" not in err
    reference = rows_of(ref_params.parent / "out/expand/candidates.parquet")
    assert not _shard_files(ref_params, "expand")  # finished work is cleaned up

    params = project_copy(prepared, tmp_path / "killed")
    set_params_in_file(params, slow)
    proc = popen_neat(params, "expand")
    assert wait_for(lambda: len(_shard_files(params, "expand")) >= 1, proc) and proc.poll() is None
    kill(proc)
    done = len(_shard_files(params, "expand"))
    assert 1 <= done < 4
    assert not (params.parent / "out/expand/candidates.parquet").exists()

    code, _, err = cli(params, "expand")
    assert code == 0
    assert f"resuming: {done} of 4 shards done" in err
    assert rows_of(params.parent / "out/expand/candidates.parquet") == reference
    stats = json.loads((params.parent / "out/expand/stats.json").read_text())
    assert stats["shards"] == 4 and stats["shards_resumed"] == done
    assert not _shard_files(params, "expand")


class Crash(BaseException):
    """A kill mid-stage: like SIGKILL it is not an error the CLI's guard turns into a message."""


def _crash_after(monkeypatch, module, name: str, calls: int) -> None:
    original = getattr(module, name)
    count = {"n": 0}

    def wrapper(*args, **kwargs):
        if count["n"] >= calls:
            raise Crash(f"simulated crash in {name}")
        count["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


def test_stale_expansion_shards_are_not_reused(prepared, tmp_path, monkeypatch):
    import neat.steering

    params = project_copy(prepared, tmp_path / "stale")
    with monkeypatch.context() as m:
        _crash_after(m, neat.steering, "sample_candidates", 2)
        with pytest.raises(Crash):
            cli(params, "expand")
    assert len(_shard_files(params, "expand")) == 2
    set_params_in_file(params, {"expand.temperature": 0.5})  # other params: the 3 shards must not be reused
    code, _, err = cli(params, "expand")
    assert code == 0 and "resuming" not in err
    fresh = project_copy(prepared, tmp_path / "fresh")
    set_params_in_file(fresh, {"expand.temperature": 0.5})
    assert cli(fresh, "expand")[0] == 0
    assert rows_of(params.parent / "out/expand/candidates.parquet") == rows_of(fresh.parent / "out/expand/candidates.parquet")


def test_scoring_crash_resumes_from_completed_shards(scored, tmp_path, monkeypatch):
    import neat.reward

    reference = rows_of(scored / "out/score/candidates.parquet")
    n_shards = -(-len(reference) // 4)
    params = project_copy(scored, tmp_path / "crashed")
    (params.parent / "out/score/candidates.parquet").unlink()  # as DVC does before rerunning the stage
    with monkeypatch.context() as m:
        _crash_after(m, neat.reward, "score_texts", 3)
        with pytest.raises(Crash):
            cli(params, "score")
    assert len(_shard_files(params, "score")) == 3
    assert not (params.parent / "out/score/candidates.parquet").exists()
    code, _, err = cli(params, "score")
    assert code == 0 and f"resuming: 3 of {n_shards} shards done" in err
    assert rows_of(params.parent / "out/score/candidates.parquet") == reference
    assert not _shard_files(params, "score")


# ---------------------------------------------------------------- a non-finite loss, through the CLI


def test_nan_loss_exits_2_keeps_last_good_checkpoint_and_resume_finishes(scored, tmp_path, monkeypatch):
    import neat.training.trainer
    from neat.training.checkpoint import state_dir_for

    params = project_copy(scored, tmp_path / "nan")
    state = state_dir_for(load_params(params))
    original = neat.training.trainer.step_loss
    calls = {"n": 0}

    def poisoned(model, batch, cfg, *args, **kwargs):
        loss, stats = original(model, batch, cfg, *args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan"), stats) if calls["n"] == 3 else (loss, stats)

    with monkeypatch.context() as m:
        m.setattr(neat.training.trainer, "step_loss", poisoned)
        code, _, err = cli(params, "train", "--resume")
    assert code == 2, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("neat: error:")]
    assert len(lines) == 1 and "non-finite loss" in lines[0] and "last good checkpoint is kept" in lines[0]
    assert "Traceback" not in err
    assert _state_step(state) == 2  # the checkpoint of the last good step
    assert not (params.parent / "out/policy").exists()
    saved = (state / "trainable.safetensors").read_bytes()
    code, _, _ = cli(params, "train", "--resume")
    assert code == 0 and (state / "trainable.safetensors").read_bytes() != saved
    assert json.loads((params.parent / "out/metrics/train.json").read_text())["steps"] == 8
