"""`neat push-to-hub`: the policy (or its adapter alone) with its model card, the hub faked at HfApi."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from neat import registry
from neat.cli import main


class FakeHfApi:
    """Stands in for huggingface_hub.HfApi: records what would be sent, copies the uploaded folder."""

    calls: list = []
    uploaded: dict = {}
    fail = False

    def create_repo(self, repo_id, **kwargs):
        FakeHfApi.calls.append(("create_repo", repo_id, kwargs))
        if FakeHfApi.fail:
            raise OSError("401 Client Error: Unauthorized\nmore detail")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        FakeHfApi.calls.append(("upload_folder", repo_id, kwargs))
        root = Path(folder_path)
        FakeHfApi.uploaded = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        return type("CommitInfo", (), {"commit_url": f"https://hub.invalid/{repo_id}/commit/1"})()


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeHfApi.calls, FakeHfApi.uploaded, FakeHfApi.fail = [], {}, False
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    return FakeHfApi


def saved_policy(out: Path) -> Path:
    policy = out / "policy"
    (policy / "adapter").mkdir(parents=True)
    (policy / "config.json").write_text("{}")
    (policy / "model.safetensors").write_bytes(b"merged weights")
    (policy / "README.md").write_text("---\nlibrary_name: transformers\n---\n# NEAT policy\n")
    (policy / "adapter" / "adapter_config.json").write_text('{"base_model_name_or_path": "builtin:tiny-random"}')
    (policy / "adapter" / "adapter_model.safetensors").write_bytes(b"lora")
    return policy


def test_push_merged_policy_and_adapter_with_card(tmp_path, fake_hub, capsys):
    saved_policy(tmp_path / "out")
    params = tmp_path / "params.yaml"
    params.write_text(f"paths:\n  out: {tmp_path / 'out'}\n")
    assert main(["push-to-hub", "me/neat-policy", "--params", str(params)]) == 0
    assert fake_hub.calls[0] == ("create_repo", "me/neat-policy",
                                 {"repo_type": "model", "private": True, "exist_ok": True})
    assert set(fake_hub.uploaded) == {"config.json", "model.safetensors", "README.md", "adapter/adapter_config.json",
                                      "adapter/adapter_model.safetensors"}
    assert json.loads(capsys.readouterr().out)["commit"].endswith("/commit/1")

    assert main(["push-to-hub", "me/neat-lora", "--adapter", "--public", "--params", str(params)]) == 0
    assert fake_hub.calls[-2][2]["private"] is False
    assert fake_hub.uploaded == {"adapter_config.json": b'{"base_model_name_or_path": "builtin:tiny-random"}',
                                 "adapter_model.safetensors": b"lora",
                                 "README.md": b"---\nlibrary_name: transformers\n---\n# NEAT policy\n"}


def test_push_a_registry_alias(tmp_path, fake_hub):
    policy = saved_policy(tmp_path / "out")
    store = registry.LocalStore(str(tmp_path / "reg"))
    registry.promote(store, registry.publish(store, policy, {"eval_reward_mean": 1.0}, version="v1",
                                             card="# card of v1\n"))
    shutil.rmtree(tmp_path / "out")
    params = tmp_path / "params.yaml"
    params.write_text(f"registry:\n  uri: {tmp_path / 'reg'}\n")
    assert main(["push-to-hub", "me/neat-prod", "--alias", "production", "--adapter", "--params", str(params)]) == 0
    assert fake_hub.uploaded["README.md"] == b"# card of v1\n" and "adapter_model.safetensors" in fake_hub.uploaded
    assert main(["push-to-hub", "me/x", "--alias", "candidate", "--params", str(params)]) == 2  # none yet


def test_hub_failures_are_one_line(tmp_path, fake_hub, capsys):
    policy = saved_policy(tmp_path / "out")
    params = tmp_path / "params.yaml"
    params.write_text(f"paths:\n  out: {tmp_path / 'out'}\n")
    fake_hub.fail = True
    assert main(["push-to-hub", "me/neat-policy", "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("neat: error:") and "me/neat-policy" in err and "Unauthorized" in err and err.count("\n") == 1
    fake_hub.fail = False
    shutil.rmtree(policy / "adapter")
    assert main(["push-to-hub", "me/neat-policy", "--adapter", "--params", str(params)]) == 2
    assert "no LoRA adapter" in capsys.readouterr().err
