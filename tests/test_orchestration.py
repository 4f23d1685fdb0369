"""DVC pipeline behaviour, the S3 remote round trip, and a real Prefect server + worker deployment run.

One tiny-model project copy is reproduced once and shared by the tests of this module, in order.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.project import free_port, git, make_project, start_prefect_server, tree_digest, venv_env, stop_process

BUCKET = "neat-dvc"
CREDS = {"AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": "testing-secret-value",
         "AWS_DEFAULT_REGION": "us-east-1"}


def sh(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=venv_env(env), capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


# ---------------------------------------------------------------- DVC on a real project copy


@pytest.fixture(scope="module")
def s3_server():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    import boto3

    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("project"))
    first = sh(["dvc", "repro"], root)
    assert "Running stage 'train'" in first.stdout
    return root


def test_second_repro_does_nothing(project):
    again = sh(["dvc", "repro"], project)
    assert "Data and pipelines are up to date" in again.stdout
    assert "Running stage" not in again.stdout


def test_changing_a_parameter_reruns_only_dependent_stages(project):
    from neat.workspace import set_params_in_file

    set_params_in_file(project / "params.yaml", {"train.lr": 2e-4})
    out = sh(["dvc", "repro"], project).stdout
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    skipped = {line.split("'")[1] for line in out.splitlines() if "didn't change, skipping" in line}
    assert "train" in ran
    assert {"prepare", "train_rm", "expand", "score"} <= skipped
    assert not ({"prepare", "train_rm", "expand", "score"} & ran)


def test_experiment_run_and_show(project):
    sh(["dvc", "exp", "run", "-S", "train.sft_weight=0.5", "-n", "sft-half"], project)
    shown = json.loads(sh(["dvc", "exp", "show", "--json"], project).stdout)
    assert "sft-half" in json.dumps(shown)
    diff = sh(["dvc", "metrics", "diff", "--json"], project)
    assert diff.returncode == 0


def test_s3_remote_push_then_pull_in_fresh_clone(project, s3_server, tmp_path):
    remote = f"s3://{BUCKET}/store"
    sh(["dvc", "remote", "add", "-f", "-d", "storage", remote], project)
    sh(["dvc", "remote", "modify", "--local", "storage", "endpointurl", s3_server], project)
    git("add", "-A", cwd=project)
    git("-c", "user.email=t@e", "-c", "user.name=t", "commit", "-qm", "results", cwd=project)
    pushed = sh(["dvc", "push"], project, env=CREDS)
    assert CREDS["AWS_SECRET_ACCESS_KEY"] not in pushed.stdout + pushed.stderr
    tracked = (project / ".dvc" / "config").read_text()
    assert "endpointurl" not in tracked and CREDS["AWS_SECRET_ACCESS_KEY"] not in tracked

    clone = tmp_path / "clone"
    git("clone", "-q", str(project), str(clone), cwd=tmp_path)
    sh(["dvc", "remote", "modify", "--local", "storage", "endpointurl", s3_server], clone)
    sh(["dvc", "pull"], clone, env=CREDS)
    cached = ("outputs/policy", "outputs/reward_model", "outputs/expand/candidates.parquet",
              "outputs/score/candidates.parquet", "outputs/data/train.jsonl")
    for out in cached:
        assert (clone / out).exists(), out
        assert tree_digest(clone / out) == tree_digest(project / out), out
    status = sh(["dvc", "status"], clone)
    assert "up to date" in status.stdout.lower() or status.stdout.strip() == ""


# ---------------------------------------------------------------- a real Prefect server and worker


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    env, server = start_prefect_server(tmp_path_factory.mktemp("prefect"))
    yield env
    stop_process(server)


def test_prefect_deployment_runs_on_a_worker(project, prefect_server, tmp_path):
    env = prefect_server
    sh(["prefect", "work-pool", "create", "neat-pool", "--type", "process"], project, env)
    sh(["prefect", "work-pool", "set-concurrency-limit", "neat-pool", "1"], project, env)
    sh(["prefect", "--no-prompt", "deploy", "--all"], project, env)
    lock_before = (project / "dvc.lock").read_text()
    assert sh(["dvc", "status", "--json"], project).stdout.strip() in ("", "{}")
    worker_log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen(["prefect", "worker", "start", "--pool", "neat-pool"], cwd=tmp_path,
                              env=venv_env(env), stdout=worker_log, stderr=subprocess.STDOUT)
    try:
        run = sh(["prefect", "deployment", "run", "neat-pipeline/on-demand", "--param",
                  'overrides={"train.sft_weight": 0.25}', "--watch", "--watch-timeout", "600"], project, env,
                 check=False)
        log = (tmp_path / "worker.log").read_text()
        assert run.returncode == 0, run.stdout[-3000:] + log[-3000:]
        assert "Completed" in run.stdout
        assert "Running stage 'train'" in log and "Stage 'prepare' didn't change, skipping" in log
        assert "revision:" in log and "dvc_experiment" in log
    finally:
        stop_process(worker)
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["train"]["sft_weight"] != 0.25  # the override was for that run only
    # ... and so were its lock and outputs: the workspace is still what params.yaml describes
    assert (project / "dvc.lock").read_text() == lock_before
    assert sh(["dvc", "status", "--json"], project).stdout.strip() in ("", "{}")
    assert (project / "outputs" / "policy" / "config.json").exists()
    assert json.loads((project / "outputs" / "metrics" / "train.json").read_text())["steps"] > 0


def test_retraining_fails_when_dvc_push_fails(project, prefect_server, tmp_path):
    """The retraining flow stops when DVC cannot sync with its remote, instead of logging and carrying on.
    A copy of the reproduced project without a remote: the stages are up to date, `dvc push` has nowhere to go."""
    import shutil
    import sys

    from neat.workspace import set_params_in_file

    copy = tmp_path / "no-remote"
    shutil.copytree(project, copy, symlinks=True)
    (copy / ".dvc" / "config.local").unlink(missing_ok=True)  # the remote's endpoint
    sh(["dvc", "remote", "remove", "storage"], copy, check=False)  # added by the S3 round trip, if it ran
    assert sh(["dvc", "remote", "list"], copy).stdout.strip() == ""
    set_params_in_file(copy / "params.yaml", {"retrain.dvc_pull": False})  # nothing to pull from either
    proc = sh([sys.executable, "-c", "from flows.pipeline import neat_retrain; neat_retrain('.')"], copy,
              {**prefect_server, "PYTHONPATH": str(copy)}, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-3000:]
    assert "dvc push failed" in text and "no remote" in text.lower()
    assert "Running stage" not in text  # the copy was up to date: the failure is the push's


def test_retrain_gate_promotes_then_refuses_regression(project, tmp_path):
    from neat.promotion import promote_if_better
    from neat import registry
    from neat.config import load_params
    from neat.workspace import set_params_in_file

    set_params_in_file(project / "params.yaml", {"registry.uri": str(tmp_path / "registry")})
    params = load_params(project / "params.yaml")
    first = promote_if_better(project, params)
    assert first["promote"] and first["reason"] == "no production model yet"
    again = promote_if_better(project, params)
    assert not again["promote"] and "already production" in again["reason"]

    store = registry.open_store(params.registry)
    current = registry.production(store)["version"]
    stored = registry.production_metrics(store)

    # stored-metrics gate: production's metrics as recorded when it was promoted
    store.put_json(f"versions/{current}/metrics.json", stored | {params.gate.metric: 1e9})
    (project / "outputs/policy/extra.txt").write_text("a different checkpoint")
    stored_gate = load_params(project / "params.yaml", ["gate.head_to_head=false"])
    refused = promote_if_better(project, stored_gate)
    assert not refused["promote"] and "regresses" in refused["reason"]
    assert registry.production(store)["version"] == current
    store.put_json(f"versions/{current}/metrics.json", stored)


def test_head_to_head_gate_re_evaluates_production(project, tmp_path):
    """The default gate evaluates production beside the candidate on this run's prompts and eval RM."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from neat.promotion import promote_if_better
    from neat import registry
    from neat.config import load_params
    from neat.models import checkpoint_id
    from neat.workspace import set_params_in_file

    set_params_in_file(project / "params.yaml", {"registry.uri": str(tmp_path / "registry"),
                                                 "gate.metric": "perplexity", "gate.higher_is_better": False})
    params = load_params(project / "params.yaml")
    policy = project / "outputs" / "policy"
    saved = tmp_path / "trained-policy"
    shutil.copytree(policy, saved)
    assert promote_if_better(project, params)["promote"]  # first version: nothing to compare with
    store = registry.open_store(params.registry)
    production = registry.production(store)["version"]
    try:
        # a candidate with scrambled weights: far worse perplexity on the held-out chosen responses
        weights = load_file(str(policy / "model.safetensors"))
        gen = torch.Generator().manual_seed(0)
        save_file({k: v + torch.randn(v.shape, generator=gen) * 0.5 if v.is_floating_point() else v
                   for k, v in weights.items()}, str(policy / "model.safetensors"), metadata={"format": "pt"})
        untouched = {d: tree_digest(project / "outputs" / d) for d in ("metrics", "evaluate", "cache")}
        refused = promote_if_better(project, params)
        # the gate's evaluation lives in the unversioned work area, not in the DVC outputs
        assert {d: tree_digest(project / "outputs" / d) for d in untouched} == untouched
        head = json.loads((project / ".neat/checkpoints/gate/metrics/evaluate.json").read_text())
        assert not refused["promote"] and "head to head" in refused["reason"]
        assert head["perplexity"] > head["base_perplexity"]
        assert head["policy_id"] == checkpoint_id(policy)
        fetched = project / ".neat/checkpoints/registry" / production
        assert head["base_policy_id"] == checkpoint_id(fetched) and head["base_model"] == str(
            Path(".neat/checkpoints/registry") / production)
        assert registry.production(store)["version"] == production

        # the same weights as production under another checkpoint id: no regression, promoted
        shutil.rmtree(policy)
        shutil.copytree(saved, policy)
        (policy / "note.txt").write_text("republished")
        promoted = promote_if_better(project, params)
        head = json.loads((project / ".neat/checkpoints/gate/metrics/evaluate.json").read_text())
        assert promoted["promote"], promoted
        assert head["perplexity"] == pytest.approx(head["base_perplexity"], rel=1e-6)
        assert store.get_json(f"versions/{promoted['version']}/gate_head_to_head.json")["policy_id"] == head["policy_id"]
    finally:
        shutil.rmtree(policy)
        shutil.copytree(saved, policy)


def test_s3_registry_promotion_head_to_head_and_no_credential_in_it(project, s3_server, monkeypatch):
    """Publish to an S3 registry (moto on 127.0.0.1), then gate a second checkpoint head to head, which
    downloads production back from S3; no object in the bucket holds the secret key."""
    import boto3

    from neat.promotion import promote_if_better
    from neat import registry
    from neat.config import load_params
    from neat.workspace import set_params_in_file

    for key, value in CREDS.items():
        monkeypatch.setenv(key, value)
    set_params_in_file(project / "params.yaml", {"registry.uri": f"s3://{BUCKET}/registry",
                                                 "registry.endpoint_url": s3_server,
                                                 "gate.metric": "eval_reward_mean", "gate.higher_is_better": True,
                                                 "gate.margin": 1e6})  # this test is about the plumbing
    params = load_params(project / "params.yaml")
    policy = project / "outputs" / "policy"
    note = policy / "s3-note.txt"
    try:
        assert promote_if_better(project, params)["promote"]
        note.write_text("another checkpoint id, same weights")
        second = promote_if_better(project, params)
        assert second["promote"] and "head to head" in second["reason"], second
    finally:
        note.unlink(missing_ok=True)
        set_params_in_file(project / "params.yaml", {"registry.endpoint_url": None, "gate.margin": 0.0})
    store = registry.open_store(params.registry)
    assert registry.production(store)["version"] == second["version"]
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="registry/")["Contents"]]
    assert any(k.endswith("/gate_head_to_head.json") for k in keys)
    for key in keys:
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert CREDS["AWS_SECRET_ACCESS_KEY"].encode() not in body, key
        assert CREDS["AWS_ACCESS_KEY_ID"].encode() not in body, key


def test_new_incoming_data_is_checked_and_picked_up(project, tmp_path):
    from neat.config import load_params
    from neat.errors import DataError
    from neat.workspace import set_params_in_file
    from neat.retrain import fetch_incoming

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    set_params_in_file(project / "params.yaml", {"retrain.incoming": str(incoming)})
    params = load_params(project / "params.yaml")
    assert fetch_incoming(params, project) is None
    (incoming / "batch-001.jsonl").write_text((ROOT / "data/demo/hh_demo.jsonl").read_text())
    assert fetch_incoming(params, project) == "data/incoming/batch-001.jsonl"
    assert (project / "data/incoming/batch-001.jsonl").exists()
    bad = incoming / "batch-002.jsonl"
    bad.write_text("not json\n")
    import os

    os.utime(bad, (time.time() + 10, time.time() + 10))
    with pytest.raises(DataError, match="batch-002.jsonl: not JSON lines"):
        fetch_incoming(params, project)
    assert not (project / "data/incoming/batch-002.jsonl").exists()
