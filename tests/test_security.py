"""Untrusted artifacts (issue 7): remote code, pickles, exposed ports, root containers, credentials."""

from __future__ import annotations

import ast
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from neat.errors import ModelError
from tests.conftest import ROOT

PACKAGE_DIRS = ("neat", "flows", "benchmarks")


def source_files() -> list[Path]:
    return sorted(p for d in PACKAGE_DIRS for p in (ROOT / d).rglob("*.py"))


# ---------------------------------------------------------------- trust_remote_code


class Spy:
    """Stands in for a transformers Auto class: records from_pretrained kwargs, then fails as offline."""

    def __init__(self):
        self.calls: list[dict] = []

    def from_pretrained(self, location, **kwargs):
        self.calls.append(kwargs)
        raise OSError("offline (spy)")


@pytest.fixture
def spies(monkeypatch):
    import neat.models

    found = {}
    for name in ("AutoModelForCausalLM", "AutoModelForSequenceClassification", "AutoTokenizer"):
        found[name] = Spy()
        monkeypatch.setattr(neat.models, name, found[name])
    return found


def test_hub_models_load_without_remote_code_by_default(spies, tmp_path):
    from neat.config import Params, load_params
    from neat.models import load_policy, load_reward_model, load_tokenizer

    assert Params().policy.trust_remote_code is False and Params().reward.trust_remote_code is False
    shipped = load_params(ROOT / "params.yaml")
    assert shipped.policy.trust_remote_code is False and shipped.reward.trust_remote_code is False
    for load in (load_policy, load_reward_model):
        with pytest.raises(ModelError, match="someorg/model"):
            load("someorg/model", cache_dir=tmp_path, device="cpu")
    with pytest.raises(ModelError):
        load_tokenizer("someorg/model", cache_dir=tmp_path)
    calls = [c for spy in spies.values() for c in spy.calls]
    assert len(calls) == 3 and all(c["trust_remote_code"] is False for c in calls)


def test_remote_code_only_when_params_turn_it_on(spies, tmp_path):
    """Through the stage: `policy.trust_remote_code: true` in params reaches from_pretrained; default does not."""
    from neat.cli import main
    from neat.workspace import set_params_in_file

    import shutil

    shutil.copy2(ROOT / "params.yaml", tmp_path / "params.yaml")
    set_params_in_file(tmp_path / "params.yaml", {"paths.data": str(ROOT / "data/demo/hh_demo.jsonl"),
                                                  "paths.out": str(tmp_path / "out"), "policy.device": "cpu",
                                                  "paths.checkpoints": str(tmp_path / "ck")})
    params = ["--params", str(tmp_path / "params.yaml"), "-S", "policy.model=someorg/model"]
    assert main(["prepare", *params]) == 0
    assert main(["expand", *params]) == 2
    assert spies["AutoModelForCausalLM"].calls[-1]["trust_remote_code"] is False
    calls = len(spies["AutoModelForCausalLM"].calls)
    assert main(["expand", *params, "-S", "policy.trust_remote_code=true"]) == 2  # refused: an override
    assert len(spies["AutoModelForCausalLM"].calls) == calls
    text = (tmp_path / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(text.replace("trust_remote_code: false", "trust_remote_code: true", 1))
    assert main(["expand", *params]) == 2  # the params file itself may turn it on
    assert spies["AutoModelForCausalLM"].calls[-1]["trust_remote_code"] is True


@pytest.mark.parametrize("override", ["policy.trust_remote_code=true", "reward.trust_remote_code=yes",
                                      "policy.trust_remote_code=1", "policy={trust_remote_code: true}",
                                      "reward={trust_remote_code: on, epochs: 1}"])
def test_overrides_cannot_turn_on_remote_code(override, capsys):
    from neat.cli import main

    assert main(["params", "--params", str(ROOT / "params.yaml"), "-S", override]) == 2
    err = capsys.readouterr().err
    assert "trust_remote_code" in err and "only be turned on in the params file" in err


def test_flow_overrides_cannot_turn_on_remote_code(tmp_path):
    """A deployment's overrides are written into params.yaml by the flow: that path refuses too, and
    the file is left as it was."""
    import shutil

    from neat.errors import ConfigError
    from neat.workspace import set_params_in_file

    shutil.copy2(ROOT / "params.yaml", tmp_path / "params.yaml")
    before = (tmp_path / "params.yaml").read_bytes()
    with pytest.raises(ConfigError, match="trust_remote_code"):
        set_params_in_file(tmp_path / "params.yaml", {"reward.trust_remote_code": True})
    assert (tmp_path / "params.yaml").read_bytes() == before


def test_no_source_hardcodes_trust_remote_code_true():
    for path in source_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                assert not (isinstance(node.value, ast.Constant) and node.value.value is True), \
                    f"{path}:{node.value.lineno} hardcodes trust_remote_code=True"


# ---------------------------------------------------------------- pickles


def test_every_torch_load_uses_weights_only_and_nothing_unpickles():
    loads = []
    for path in source_files():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                loads.append((f"{path.relative_to(ROOT)}:{node.lineno}", ok))
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not {"pickle", "dill", "cloudpickle", "joblib"} & set(names), f"{path}: imports a pickler"
    assert loads, "expected the optimizer/scheduler state loads in neat/training/checkpoint.py"
    assert all(ok for _, ok in loads), [where for where, ok in loads if not ok]


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _short_run(tmp_path):
    from neat.steering import select_prompts
    from neat.training.trainer import Trainer, load_trainable_policy
    from tests.test_train import make_params, synthetic_rows

    pairs, rows = synthetic_rows()
    params = make_params(tmp_path, checkpoint_every=1)
    model, tokenizer = load_trainable_policy(params)
    trainer = Trainer(params, model, tokenizer, out_dir=params.out("train"), progress=False)
    trainer.run(rows, select_prompts(pairs, 6), pairs, fingerprint_="fp", stop_after_steps=1)
    return params, pairs, rows, model, tokenizer


def test_checkpoints_are_safetensors_and_a_malicious_optimizer_pickle_is_refused(tmp_path):
    from neat.steering import select_prompts
    from neat.models import save_model
    from neat.training.trainer import Trainer, load_trainable_policy

    params, pairs, rows, model, tokenizer = _short_run(tmp_path)
    state = params.out("train") / "state"
    assert (state / "trainable.safetensors").is_file()
    save_model(model, tokenizer, tmp_path / "policy")
    weights = [p.name for p in (tmp_path / "policy").iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pkl")]
    assert weights == ["model.safetensors"]

    marker = tmp_path / "exploit-ran"
    torch.save({"state": _Exploit(marker)}, state / "optimizer.pt")
    model, tokenizer = load_trainable_policy(params)
    trainer = Trainer(params, model, tokenizer, out_dir=params.out("train"), progress=False)
    from neat.errors import TrainingError

    with pytest.raises(TrainingError, match="checkpoint cannot be loaded safely \\(UnpicklingError\\)"):
        trainer.run(rows, select_prompts(pairs, 6), pairs, fingerprint_="fp", resume=True)
    assert not marker.exists()


# ---------------------------------------------------------------- deployment defaults


def test_prefect_server_and_published_ports_bind_to_localhost():
    compose = yaml.safe_load((ROOT / "docker/compose.yaml").read_text())
    ports = [str(p) for svc in compose["services"].values() for p in svc.get("ports", [])]
    assert ports and all(p.startswith("127.0.0.1:") for p in ports), ports
    readme = (ROOT / "README.md").read_text()
    starts = [ln for ln in readme.splitlines() if "prefect server start" in ln]
    assert starts and all("--host 127.0.0.1" in ln for ln in starts), starts
    assert "0.0.0.0" not in readme


def test_container_runs_as_non_root():
    lines = [ln.strip() for ln in (ROOT / "docker/Dockerfile").read_text().splitlines()]
    users = [ln.split(None, 1)[1].strip() for ln in lines if ln.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    last_user = max(i for i, ln in enumerate(lines) if ln.upper().startswith("USER "))
    cmd = max(i for i, ln in enumerate(lines) if ln.upper().startswith(("CMD", "ENTRYPOINT")))
    assert last_user < cmd


# ---------------------------------------------------------------- credentials


SECRET_PATTERNS = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key ids
    re.compile(r"(?i)aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{40}\b"),  # AWS secret keys
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)(MINIO_ROOT_PASSWORD|PREFECT_API_KEY)\s*[=:]\s*(?!\$|change-me)['\"]?[^\s'\"$]{8,}"),
]


def test_no_credential_in_tracked_files():
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert "docker/.env" not in files and ".dvc/config.local" not in files
    hits = []
    for rel in files:
        path = ROOT / rel
        if not path.is_file() or path.stat().st_size > 5_000_000:
            continue
        text = path.read_bytes().decode("utf-8", errors="ignore")
        hits += [f"{rel}: {m.group(0)[:40]}" for pat in SECRET_PATTERNS for m in pat.finditer(text)]
    assert not hits, hits
    ignored = subprocess.run(["git", "check-ignore", "docker/.env", ".dvc/config.local"], cwd=ROOT,
                             capture_output=True, text=True).stdout.split()
    assert "docker/.env" in ignored and ".dvc/config.local" in ignored
