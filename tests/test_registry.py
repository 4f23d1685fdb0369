"""The promotion gate, publishing under versioned keys, the production pointer and rollback."""

from __future__ import annotations

import json

import pytest

from neat import registry
from neat.cli import main
from neat.config import validate_params
from neat.registry import RegistryError, gate
from tests.conftest import former_defaults


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
    params = validate_params(former_defaults({"registry": {"uri": "s3://models/x", "endpoint_url": "http://127.0.0.1:9"}}))
    store = registry.open_store(params.registry)
    store.client.meta.config.retries = {"max_attempts": 1}
    with pytest.raises(RegistryError) as info:
        registry.production(store)
    message = str(info.value)
    assert "s3://models/x" in message and "\n" not in message and "super-secret-value" not in message


# ---------------------------------------------------------------- path traversal (issue 12)


TRAVERSAL_VERSIONS = ["../../../../elsewhere", "v1/../../x", "/abs", "v1\x00", "", "..", "v" + "1" * 80, 7]


@pytest.mark.parametrize("version", TRAVERSAL_VERSIONS, ids=repr)
def test_version_ids_outside_the_pattern_are_refused(store, tmp_path, version):
    with pytest.raises(RegistryError, match="not a valid version id"):
        registry.fetch_policy(store, version, tmp_path / "cache")
    with pytest.raises(RegistryError, match="not a valid version id"):
        registry.promote(store, version)


@pytest.mark.parametrize("key", ["../outside.json", "versions/../../outside.json", "/etc/passwd",
                                 "versions//x", "a\\..\\b"])
def test_store_keys_that_leave_the_prefix_are_refused(store, tmp_path, key):
    src = tmp_path / "payload"
    src.write_text("x")
    with pytest.raises(RegistryError, match="leaves its prefix"):
        store.put(key, src)
    with pytest.raises(RegistryError, match="leaves its prefix"):
        store.put_json(key, {"a": 1})
    with pytest.raises(RegistryError, match="leaves its prefix"):
        store.get_json(key)
    assert not (tmp_path / "outside.json").exists()


def test_local_store_refuses_a_symlink_that_leads_outside(tmp_path):
    root = tmp_path / "registry"
    (root / "versions").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (root / "versions" / "v1").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RegistryError, match="outside"):
        registry.LocalStore(str(root)).put_json("versions/v1/metrics.json", {"m": 1})
    assert not list((tmp_path / "elsewhere").iterdir())


def test_rollback_to_a_traversal_version_in_a_damaged_pointer_is_refused(tmp_path):
    """The attack of issue 12: a history entry '../../../../elsewhere' made the cache step rename and
    delete a directory outside the registry."""
    root = tmp_path / "reg"
    store = registry.LocalStore(str(root))
    registry.promote(store, registry.publish(store, checkpoint(tmp_path, "a", b"x"), {"m": 1.0}, version="v1"))
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    (root / "production.json").write_text(json.dumps({"version": "v1", "history": ["../../victim"]}))
    with pytest.raises(RegistryError, match="not a valid version id"):
        registry.rollback(store)
    with pytest.raises(RegistryError, match="not a valid version id"):
        registry.production(store)
    assert (victim / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize("text", ["[1, 2]", '{"version": 5}', '{"history": []}', '{"version": "v1", "history": "v0"}',
                                  "{not json"])
def test_damaged_pointer_is_one_clear_error(tmp_path, text, capsys):
    root = tmp_path / "reg"
    root.mkdir()
    (root / "production.json").write_text(text)
    params = tmp_path / "params.yaml"
    params.write_text(f"registry:\n  uri: {root}\n")
    assert main(["registry", "--params", str(params)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("neat: error:") and "production.json" in err and "\n" not in err


def test_rollback_refuses_a_version_that_was_never_published(store, tmp_path):
    registry.promote(store, registry.publish(store, checkpoint(tmp_path, "a", b"x"), {"m": 1.0}, version="v2"))
    store.put_json("production.json", {"version": "v2", "history": ["v1"]})  # v1 never published
    with pytest.raises(RegistryError, match="never published"):
        registry.rollback(store)
    assert registry.production(store) == {"version": "v2", "history": ["v1"]}


def test_fetch_refuses_an_object_key_that_leaves_the_download_directory(tmp_path):
    class Hostile(registry.LocalStore):
        def list(self, prefix):
            return [f"{prefix}config.json", f"{prefix}../../../../escaped.txt"]

        def download(self, key, path):
            Path(path).write_text("payload")

    from pathlib import Path

    cache = tmp_path / "deep" / "er" / "cache"
    with pytest.raises(RegistryError, match="leaves its prefix"):
        registry.fetch_policy(Hostile(str(tmp_path / "reg")), "v1", cache)
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not (cache / "v1").exists()


# ---------------------------------------------------------------- champion/challenger (issue 13)


def test_several_gate_metrics_must_all_hold():
    params = validate_params(former_defaults({"gate": {"metric": "eval_reward_mean", "metrics": [
        {"name": "unsafe_refusal_rate", "margin": 0.0}, {"name": "safe_compliance_rate", "margin": 0.05}]}}))
    prod = {"eval_reward_mean": 1.0, "unsafe_refusal_rate": 0.9, "safe_compliance_rate": 0.8}
    better = {"eval_reward_mean": 1.2, "unsafe_refusal_rate": 0.9, "safe_compliance_rate": 0.76}
    assert registry.multi_gate(params.gate, better, prod).promote  # compliance inside its margin
    less_safe = better | {"unsafe_refusal_rate": 0.85}
    refused = registry.multi_gate(params.gate, less_safe, prod)
    assert not refused.promote and "unsafe_refusal_rate regresses" in refused.reason
    assert "eval_reward_mean" not in refused.reason  # the reason names what failed
    assert not registry.multi_gate(params.gate, better | {"safe_compliance_rate": 0.7}, prod).promote
    assert registry.multi_gate(params.gate, better, None).reason == "no production model yet"
    head = {"eval_reward_mean": 1.1, "base_eval_reward_mean": 1.0, "unsafe_refusal_rate": 0.8,
            "base_unsafe_refusal_rate": 0.9, "safe_compliance_rate": 0.8, "base_safe_compliance_rate": 0.8}
    verdict = registry.multi_head_to_head_gate(params.gate, head)
    assert not verdict.promote and "unsafe_refusal_rate regresses head to head" in verdict.reason
    # the single-metric form still works alone (backward compatible)
    single = validate_params(former_defaults({"gate": {"metric": "eval_reward_mean"}}))
    assert registry.multi_gate(single.gate, less_safe, prod).promote


def test_project_gate_guards_safety_as_well_as_reward():
    from neat.config import load_params
    from tests.conftest import ROOT

    rules = {name for name, _, _ in registry.gate_rules(load_params(ROOT / "params.yaml").gate)}
    assert rules == {"eval_reward_mean", "unsafe_refusal_rate", "safe_compliance_rate"}


def test_candidate_and_production_aliases_move_and_show(store, tmp_path, capsys):
    v1 = registry.publish(store, checkpoint(tmp_path, "a", b"one"), {"eval_reward_mean": 1.0}, version="v1",
                          extra={"checkpoint": "c1", "git_commit": "abc", "dvc_lock_sha256": "d1"})
    v2 = registry.publish(store, checkpoint(tmp_path, "b", b"two"), {"eval_reward_mean": 0.5}, version="v2",
                          extra={"checkpoint": "c2", "git_commit": "def", "dvc_lock_sha256": "d2"})
    assert registry.status(store) == {"production": None, "candidate": None}
    registry.promote(store, v1)
    registry.set_alias(store, "candidate", v2)
    shown = registry.status(store)
    assert shown["production"] == {"version": "v1", "metrics": {"eval_reward_mean": 1.0}, "history": [],
                                   "lineage": {"checkpoint": "c1", "git_commit": "abc", "dvc_lock_sha256": "d1"}}
    assert shown["candidate"]["version"] == "v2" and shown["candidate"]["lineage"]["git_commit"] == "def"
    registry.set_alias(store, "production", v2)  # the challenger becomes the champion
    assert registry.alias(store, "production") == {"version": "v2", "history": ["v1"]}
    with pytest.raises(RegistryError, match="not published"):
        registry.set_alias(store, "candidate", "v9")
    with pytest.raises(RegistryError, match="unknown alias"):
        registry.set_alias(store, "staging", "v1")
    actions = {store.get_json(key)["action"] for key in store.list("pointer-log")}
    assert actions == {"promote", "set candidate"}  # every alias move is logged


def test_cli_registry_shows_both_aliases_and_moves_one(tmp_path, capsys):
    root = tmp_path / "reg"
    store = registry.LocalStore(str(root))
    for name, value in (("v1", 1.0), ("v2", 2.0)):
        registry.publish(store, checkpoint(tmp_path, name, b"x"), {"eval_reward_mean": value}, version=name)
    registry.promote(store, "v1")
    params = tmp_path / "params.yaml"
    params.write_text(f"registry:\n  uri: {root}\n")
    assert main(["registry", "alias", "candidate", "v2", "--params", str(params)]) == 0
    assert json.loads(capsys.readouterr().out) == {"candidate": {"version": "v2", "history": []}}
    assert main(["registry", "--params", str(params)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["production"]["version"] == "v1" and shown["candidate"]["metrics"] == {"eval_reward_mean": 2.0}
    assert main(["registry", "alias", "production", "v2", "--params", str(params)]) == 0
    assert json.loads(capsys.readouterr().out)["production"] == {"version": "v2", "history": ["v1"]}
    assert main(["registry", "alias", "production", "../x", "--params", str(params)]) == 2
    assert main(["registry", "move", "--params", str(params)]) == 2


def test_gate_publishes_candidate_with_card_and_promotes_only_if_all_hold(tmp_path):
    """promote_if_better: every judged checkpoint becomes `candidate` with a model card carrying this run's
    evaluation and the verdict; `production` moves only when every gate metric holds."""
    import subprocess

    from neat.promotion import promote_if_better

    project = tmp_path / "proj"
    out = project / "out"
    (out / "metrics").mkdir(parents=True)
    (project / "dvc.lock").write_text("schema: '2.0'\n")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    evaluation = {"prompts": 3, "judge": "string_match", "eval_reward_mean": 0.5, "eval_reward_mean_ci_low": 0.4,
                  "eval_reward_mean_ci_high": 0.6, "unsafe_refusal_rate": 0.9, "safe_compliance_rate": 0.8}
    (out / "metrics" / "evaluate.json").write_text(json.dumps(evaluation))
    (out / "metrics" / "train.json").write_text(json.dumps({"steps": 7}))
    policy = out / "policy"
    policy.mkdir()
    (policy / "config.json").write_text("{}")
    (policy / "model.safetensors").write_bytes(b"first")
    params = validate_params(former_defaults({"paths": {"out": "out"}, "registry": {"uri": str(tmp_path / "reg")},
                              "gate": {"head_to_head": False, "metrics": [{"name": "unsafe_refusal_rate"}]}}))
    store = registry.open_store(params.registry)

    first = promote_if_better(project, params)
    assert first["promote"] and first["candidate"] == first["version"]
    card = (tmp_path / "reg" / "versions" / first["version"] / "policy" / "README.md").read_text()
    assert "| eval reward (mean) | 0.5 | [0.4, 0.6] |" in card and "promoted: no production model yet" in card
    assert f"registry version: `{first['version']}`" in card and "| steps | 7 |" in card

    (policy / "model.safetensors").write_bytes(b"second: better reward, less safe")
    (out / "metrics" / "evaluate.json").write_text(json.dumps(evaluation | {"eval_reward_mean": 0.9,
                                                                            "unsafe_refusal_rate": 0.7}))
    second = promote_if_better(project, params)
    assert not second["promote"] and "unsafe_refusal_rate regresses" in second["reason"]
    assert registry.alias(store, "candidate")["version"] == second["candidate"] != first["version"]
    assert registry.alias(store, "production")["version"] == first["version"]
    card = (tmp_path / "reg" / "versions" / second["candidate"] / "policy" / "README.md").read_text()
    assert "not promoted: unsafe_refusal_rate regresses" in card
