"""The promotion gate, publishing under versioned keys, the production pointer and rollback."""

from __future__ import annotations

import json

import pytest

from neat import registry
from neat.cli import main
from neat.config import validate_params
from neat.registry import RegistryError, gate


def test_gate_promotes_on_improvement_and_refuses_regression():
    assert gate({"r": 1.2}, {"r": 1.0}, "r", margin=0.0).promote
    assert gate({"r": 0.95}, {"r": 1.0}, "r", margin=0.1).promote  # inside the margin
    refused = gate({"r": 0.8}, {"r": 1.0}, "r", margin=0.1)
    assert not refused.promote and "regresses" in refused.reason
    assert gate({"r": 0.5}, None, "r", margin=0.0).promote  # nothing in production yet
    assert not gate({"other": 1}, {"r": 1.0}, "r", margin=0.0).promote
    assert gate({"ppl": 9.0}, {"ppl": 10.0}, "ppl", margin=0.0, higher_is_better=False).promote
    assert not gate({"ppl": 11.0}, {"ppl": 10.0}, "ppl", margin=0.5, higher_is_better=False).promote


def checkpoint(tmp_path, name, payload):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"name": name}))
    (d / "model.safetensors").write_bytes(payload)
    return d


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path, monkeypatch):
    if request.param == "local":
        yield registry.LocalStore(str(tmp_path / "registry"))
        return
    from moto import mock_aws

    for key, value in {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        import boto3

        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="models")
        yield registry.S3Store("s3://models/neat", None, "us-east-1")


def test_publish_promote_rollback_never_delete(store, tmp_path):
    v1 = registry.publish(store, checkpoint(tmp_path, "a", b"one"), {"eval_reward_mean": 1.0}, version="v1")
    registry.promote(store, v1)
    assert registry.production(store) == {"version": "v1", "history": []}
    v2 = registry.publish(store, checkpoint(tmp_path, "b", b"two"), {"eval_reward_mean": 1.5}, version="v2")
    registry.promote(store, v2)
    assert registry.production(store) == {"version": "v2", "history": ["v1"]}
    assert registry.production_metrics(store) == {"eval_reward_mean": 1.5}
    keys_before = set(store.list(""))
    assert {"versions/v1/policy/model.safetensors", "versions/v2/policy/config.json"} <= keys_before

    assert registry.rollback(store) == {"version": "v1", "history": []}
    assert registry.production_metrics(store) == {"eval_reward_mean": 1.0}
    assert keys_before <= set(store.list(""))  # nothing deleted, only the pointer moved
    assert len([k for k in store.list("pointer-log")]) == 3
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback(store)


def test_head_to_head_gate_compares_both_sides_of_one_evaluation():
    from neat.registry import head_to_head_gate

    head = {"eval_reward_mean": 0.30, "base_eval_reward_mean": 0.25, "perplexity": 12.0, "base_perplexity": 11.0,
            "win_rate": 0.45, "eval_reward_diff": 0.05, "unsafe_refusal_rate": 0.8, "base_unsafe_refusal_rate": 0.9}
    holds = head_to_head_gate(head, "eval_reward_mean", 0.0)
    assert holds.promote and (holds.candidate, holds.current) == (0.30, 0.25) and "head to head" in holds.reason
    assert not head_to_head_gate(head, "perplexity", 0.5, higher_is_better=False).promote  # 12 > 11 + 0.5
    assert head_to_head_gate(head, "perplexity", 1.0, higher_is_better=False).promote
    assert not head_to_head_gate(head, "win_rate", 0.0).promote  # loses more often than it wins
    assert head_to_head_gate(head, "win_rate", 0.05).promote
    assert head_to_head_gate(head, "eval_reward_diff", 0.0).current == 0.0
    assert not head_to_head_gate(head, "unsafe_refusal_rate", 0.05).promote
    missing = head_to_head_gate(head, "seconds", 0.0)
    assert not missing.promote and "no production counterpart" in missing.reason


def test_fetch_policy_downloads_a_version_once(store, tmp_path):
    v1 = registry.publish(store, checkpoint(tmp_path, "a", b"weights-one"), {"r": 1.0}, version="v1")
    got = registry.fetch_policy(store, v1, tmp_path / "cache")
    assert (got / "model.safetensors").read_bytes() == b"weights-one"
    assert json.loads((got / "config.json").read_text()) == {"name": "a"}
    (got / "model.safetensors").write_bytes(b"local")  # a second call reuses the download
    assert (registry.fetch_policy(store, v1, tmp_path / "cache") / "model.safetensors").read_bytes() == b"local"
    with pytest.raises(RegistryError, match="no published checkpoint"):
        registry.fetch_policy(store, "v9", tmp_path / "cache")
    assert not (tmp_path / "cache" / "v9").exists()


def test_promote_requires_published_version(store):
    with pytest.raises(RegistryError, match="not published"):
        registry.promote(store, "v404")


def test_cli_rollback(tmp_path, capsys):
    root = tmp_path / "reg"
    store = registry.LocalStore(str(root))
    for name, value in (("v1", 1.0), ("v2", 2.0)):
        registry.promote(store, registry.publish(store, checkpoint(tmp_path, name, b"x"), {"m": value}, version=name))
    params = tmp_path / "params.yaml"
    params.write_text(f"registry:\n  uri: {root}\n")
    assert main(["rollback", "--params", str(params)]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "v1"
    assert main(["rollback", "--params", str(params)]) == 2
    assert "nothing to roll back" in capsys.readouterr().err


def test_unreachable_s3_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "super-secret-value")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    params = validate_params({"registry": {"uri": "s3://models/x", "endpoint_url": "http://127.0.0.1:9"}})
    store = registry.open_store(params.registry)
    store.client.meta.config.retries = {"max_attempts": 1}
    with pytest.raises(RegistryError) as info:
        registry.production(store)
    message = str(info.value)
    assert "s3://models/x" in message and "\n" not in message and "super-secret-value" not in message
