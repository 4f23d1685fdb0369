"""Remote and orchestration faults (issue 7).

* The S3 remote (moto on 127.0.0.1) is down, or answers 500, during `dvc push` / `dvc pull`: a clear
  error, the local cache and outputs unchanged, and the same command succeeds once it is back.
* Wrong credentials: a clear error that does not print the secret (nor does anything else).
* A Prefect process worker dies (SIGKILL to it and its flow-run processes) while the train stage
  runs: the run is marked Crashed (`python -m flows.pipeline mark-crashed` at worker restart), and
  the re-run reuses the completed stages from the DVC cache and resumes training.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.project import free_port, git, make_project, start_prefect_server, tree_digest, venv_env, stop_process

BUCKET = "neat-faults"
SECRET = "wJalrXUtnFEMI-K7MDENG-neat-FAKE-SECRET-7f3a9c"  # distinctive: must never be printed or stored
CREDS = {"AWS_ACCESS_KEY_ID": "fake-access-key-id-0001", "AWS_SECRET_ACCESS_KEY": SECRET,
         "AWS_DEFAULT_REGION": "us-east-1"}


# botocore's default retries with backoff, per object, turn a push to a down endpoint into a two-minute wait
# (131 s against 2.7 s with one attempt); what these tests check is the failure's message and the untouched
# local state, which one attempt shows as well. Users keep botocore's default.
ONE_ATTEMPT = {"AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}
# a 500 answer as boto words it: from an error body (a GET), or from the status alone (a HEAD has no body)
SERVER_ERROR = re.compile(r"InternalError|Internal Server Error|\(500\)")


def dvc(project: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["dvc", *args], cwd=project, env=venv_env(CREDS | ONE_ATTEMPT | (env or {})),
                          capture_output=True, text=True, timeout=600)


class S3:
    """An S3 endpoint on a fixed port that can be down, answer 500 to everything, or be moto."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = None

    def up(self) -> None:
        from moto.server import ThreadedMotoServer

        self.down()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="admin",
                          aws_secret_access_key="admin")
        if BUCKET not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
            s3.create_bucket(Bucket=BUCKET)

    def failing(self) -> None:
        self.down()

        class Handler(http.server.BaseHTTPRequestHandler):
            def _fail(self):
                body = b'<?xml version="1.0"?><Error><Code>InternalError</Code><Message>injected fault</Message></Error>'
                self.send_response(500)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _fail

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server

    def down(self) -> None:
        if self._server is None:
            return
        if isinstance(self._server, http.server.HTTPServer):
            self._server.shutdown()
            self._server.server_close()
        else:
            self._server.stop()
        self._server = None


@pytest.fixture(scope="module")
def s3():
    server = S3()
    yield server
    server.down()


@pytest.fixture(scope="module")
def project(tmp_path_factory, s3):
    """A tiny project with the prepare stage's outputs in the DVC cache and an S3 remote configured."""
    root = make_project(tmp_path_factory.mktemp("faults") / "project")
    proc = dvc(root, "repro", "prepare")
    assert proc.returncode == 0, proc.stderr
    dvc(root, "remote", "add", "-d", "storage", f"s3://{BUCKET}/store")
    dvc(root, "remote", "modify", "--local", "storage", "endpointurl", s3.url)
    git("add", "-A", cwd=root)
    git("-c", "user.email=t@e", "-c", "user.name=t", "commit", "-qm", "prepared", cwd=root)
    return root


def local_state(project: Path) -> dict:
    return tree_digest(project / ".dvc" / "cache") | tree_digest(project / "outputs")


def assert_clear_failure(proc: subprocess.CompletedProcess, *expected: str) -> None:
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text
    assert "ERROR" in text and all(e in text for e in expected), text
    assert "Traceback" not in text
    assert SECRET not in text


def test_push_fails_clearly_while_remote_is_down_or_failing_then_retry_succeeds(project, s3):
    before = local_state(project)
    s3.down()
    down = dvc(project, "push")
    assert_clear_failure(down, "Could not connect to the endpoint URL")
    assert local_state(project) == before

    s3.failing()
    failing = dvc(project, "push")
    assert_clear_failure(failing)
    assert SERVER_ERROR.search(failing.stdout + failing.stderr)
    assert local_state(project) == before

    s3.up()
    retry = dvc(project, "push")
    assert retry.returncode == 0 and "pushed" in retry.stdout, retry.stderr
    assert SECRET not in retry.stdout + retry.stderr
    assert local_state(project) == before


def test_pull_fails_clearly_while_remote_is_down_then_retry_succeeds(project, s3, tmp_path):
    s3.up()
    assert dvc(project, "push").returncode == 0  # the remote holds the outputs
    clone = tmp_path / "clone"
    git("clone", "-q", str(project), str(clone), cwd=tmp_path)
    dvc(clone, "remote", "modify", "--local", "storage", "endpointurl", s3.url)

    s3.down()
    down = dvc(clone, "pull", "prepare")
    assert_clear_failure(down)
    assert not (clone / "outputs/data/train.jsonl").exists()  # nothing half-written in the workspace
    assert not [p for p in clone.rglob("*") if p.name.endswith(".tmp") and "outputs" in str(p)]

    s3.failing()
    failing = dvc(clone, "pull", "prepare")
    assert_clear_failure(failing)
    assert SERVER_ERROR.search(failing.stdout + failing.stderr)

    s3.up()  # the same in-process moto backend: the pushed objects are still there
    retry = dvc(clone, "pull", "prepare")
    assert retry.returncode == 0, retry.stderr
    for out in ("outputs/data/train.jsonl", "outputs/data/eval.jsonl", "outputs/data/judge.jsonl"):
        assert tree_digest(clone / out) == tree_digest(project / out), out


def test_wrong_credentials_fail_clearly_without_printing_the_secret(project, s3, monkeypatch):
    import moto.settings

    s3.up()
    before = local_state(project)
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # moto checks credentials from now on
    wrong = dvc(project, "push")
    # boto reports a bad key as InvalidAccessKeyId, or (depending on which request fails first) as a bare
    # 403 Forbidden on HeadObject; either is a clear credentials failure
    assert_clear_failure(wrong)
    assert re.search(r"InvalidAccessKeyId|Forbidden|403|AccessDenied|SignatureDoesNotMatch", wrong.stdout + wrong.stderr)
    assert CREDS["AWS_SECRET_ACCESS_KEY"] not in wrong.stdout + wrong.stderr
    assert local_state(project) == before


def test_secret_appears_in_no_file_of_the_project(project):
    """After pushes, failed pushes and pulls with the secret in the environment: not in any file
    (DVC config, logs under .dvc/tmp, outputs, the git history)."""
    hits = []
    for path in project.rglob("*"):
        if path.is_file() and SECRET.encode() in path.read_bytes():
            hits.append(str(path.relative_to(project)))
    assert not hits
    tracked = (project / ".dvc" / "config").read_text()
    assert "endpointurl" not in tracked  # the endpoint lives in .dvc/config.local, not in git


# ---------------------------------------------------------------- a Prefect worker dies mid-run


def _api(env: dict, path: str, body: dict | None = None):
    req = urllib.request.Request(env["PREFECT_API_URL"] + path, data=json.dumps(body or {}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _start_worker(project: Path, env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(["prefect", "worker", "start", "--pool", "neat-pool"], cwd=project,
                            env=venv_env(env), stdout=open(log, "a"), stderr=subprocess.STDOUT,
                            start_new_session=True)


STAGES_UP_TO_TRAIN = '["prepare", "train_rm", "expand", "score", "train"]'


# A real server, worker and five DVC stages twice: about 100-120 s on 2 CPU cores; CI runs it (issue 7).
def test_worker_killed_mid_run_is_marked_crashed_and_rerun_reuses_cached_stages(tmp_path):
    project = make_project(tmp_path / "project", {
        "reward.model": "builtin:tiny-random", "data.max_train_prompts": 8, "train.batch_size": 1,
        "train.rounds": 3, "train.checkpoint_every": 1})
    env, server = start_prefect_server(tmp_path)
    worker = None
    try:
        for cmd in (["prefect", "work-pool", "create", "neat-pool", "--type", "process"],
                    ["prefect", "--no-prompt", "deploy", "--all"]):
            proc = subprocess.run(cmd, cwd=project, env=venv_env(env), capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stdout + proc.stderr
        log = tmp_path / "worker.log"
        worker = _start_worker(project, env, log)
        run = subprocess.run(["prefect", "deployment", "run", "neat-pipeline/on-demand", "--param",
                              f"stages={STAGES_UP_TO_TRAIN}"], cwd=project, env=venv_env(env),
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", run.stdout).group(1)

        # wait until the train stage is running (its first checkpoint exists), then kill everything:
        # the worker's process group and the flow-run process tree (Prefect starts it in its own session)
        checkpoints = project / ".neat" / "checkpoints"
        deadline = time.monotonic() + 400
        while not list(checkpoints.glob("*/train/state.json")):
            assert time.monotonic() < deadline and worker.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        victims = [worker.pid, *_descendants(worker.pid)]
        os.killpg(worker.pid, signal.SIGKILL)
        _kill_all(victims)
        worker.wait(timeout=30)
        time.sleep(1)
        assert not any(_alive(pid) for pid in victims)
        flow_run = _api(env, f"/flow_runs/{run_id}")
        assert flow_run["state_type"] == "RUNNING"  # the server cannot know by itself

        # the restarted worker's first step marks the orphaned run as crashed
        mark = subprocess.run(["python", "-m", "flows.pipeline", "mark-crashed", "--pool", "neat-pool"],
                              cwd=project, env=venv_env(env), capture_output=True, text=True, timeout=120)
        assert mark.returncode == 0, mark.stderr
        assert flow_run["id"] in mark.stdout
        crashed = _api(env, f"/flow_runs/{flow_run['id']}")
        assert crashed["state_type"] == "CRASHED" and "no longer exists" in crashed["state"]["message"]

        worker = _start_worker(project, env, log)
        before = log.read_text()
        rerun = subprocess.run(["prefect", "deployment", "run", "neat-pipeline/on-demand", "--param",
                                f"stages={STAGES_UP_TO_TRAIN}", "--watch", "--watch-timeout", "500"], cwd=project,
                               env=venv_env(env), capture_output=True, text=True, timeout=560)
        second = log.read_text()[len(before):]
        assert rerun.returncode == 0 and "Completed" in rerun.stdout, rerun.stdout[-2000:] + second[-3000:]
        for stage in ("prepare", "train_rm", "expand", "score"):
            assert f"Stage '{stage}' didn't change, skipping" in second, stage
        assert "Running stage 'train'" in second
        assert (project / "outputs/policy/config.json").exists()
    finally:
        if worker is not None:
            _kill_all([worker.pid, *_descendants(worker.pid)])
        stop_process(server)


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
