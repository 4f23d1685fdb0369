"""A throw-away copy of the project (tracked files only) configured for the tiny model."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from neat.workspace import set_params_in_file
from tests.conftest import ROOT

TINY = {
    "paths.data": "data/demo/hh_demo.jsonl",  # the embedded default's real data is for measuring, not tests
    "paths.safety_prompts": "data/demo/safety_prompts.csv",
    "policy.model": "builtin:tiny-random",
    "policy.device": "cpu",
    "data.max_train_prompts": 4,
    "data.max_benign_prompts": 0,
    "data.max_harmful_prompts": 0,
    "reward.max_pairs": 16,
    "reward.epochs": 1,
    "reward.max_length": 64,
    "reward.device": "cpu",
    "expand.k_pos": 1,
    "expand.k_neg": 1,
    "expand.max_new_tokens": 6,
    "train.rounds": 1,
    "train.batch_size": 2,
    "train.max_response_tokens": 24,
    "train.max_prompt_tokens": 96,
    "evaluate.max_prompts": 3,
    "evaluate.max_safety_prompts": 4,
    "evaluate.max_new_tokens": 4,
    "evaluate.bootstrap": 100,
    "reward.bf16_autocast": False,
    "train.bf16_autocast": False,  # float32: the same numbers on machines with and without native bf16
    "generation.cpu_dtype": "float32",
}


def git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def make_project(dest: Path, overrides: dict | None = None, source: Path = ROOT, with_compare: bool = False) -> Path:
    """Copy the git-tracked files of `source` (this checkout) to `dest`, apply tiny-model params, commit.

    Tracked only: untracked files — a benchmark's outputs, scratch notes — are the user's working tree,
    not the project, and copying them made the suite's speed and results depend on it. compare/dvc.yaml
    (the comparison of variants, which `dvc repro` does not run) only `with_compare`: `dvc status` and
    `dvc exp show` of a project that has it list its stages and metrics as not produced yet.
    """
    files = git("ls-files", "--cached", cwd=source).splitlines()
    skip = ("tests/", "outputs/", ".neat/") + (() if with_compare else ("compare/",))
    for rel in files:
        src = source / rel
        if src.is_file() and not rel.startswith(skip):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    set_params_in_file(dest / "params.yaml", {**TINY, **(overrides or {})})
    git("init", "-q", "-b", "main", cwd=dest)
    git("-c", "user.email=t@example.com", "-c", "user.name=test", "add", "-A", cwd=dest)
    git("-c", "user.email=t@example.com", "-c", "user.name=test", "commit", "-qm", "test project", cwd=dest)
    return dest


def venv_env(extra: dict | None = None) -> dict:
    """Environment for subprocesses: the venv's tools first on PATH, offline, no analytics."""
    import sys

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update({"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "DVC_NO_ANALYTICS": "1"})
    env.update(extra or {})
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_digest(path: Path) -> dict[str, str]:
    """md5 of a file, or of every file under a folder, keyed by path relative to its parent."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path.parent)): hashlib.md5(p.read_bytes()).hexdigest() for p in files}


def start_prefect_server(tmp_path: Path) -> tuple[dict, subprocess.Popen]:
    """A real Prefect server on a free loopback port with its own PREFECT_HOME; (env, process)."""
    port = free_port()
    env = {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_API_HOST": "127.0.0.1",
           "PREFECT_SERVER_API_PORT": str(port), "PREFECT_API_REQUEST_TIMEOUT": "90",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90", "PREFECT_LOGGING_LEVEL": "INFO",
           "PREFECT_WORKER_QUERY_SECONDS": "2"}  # a worker polls every 10 s by default: up to 10 s idle per run
    log = tmp_path / "server.log"
    server = subprocess.Popen(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=venv_env(env), stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
            return env, server
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("prefect server did not start:\n" + log.read_text()[-2000:])
            time.sleep(1)


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` s (a Prefect worker or server can take
    longer than that to shut down on a loaded machine; the test's checks are done by then)."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)
