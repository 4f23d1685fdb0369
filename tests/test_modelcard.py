"""Model cards: what a saved policy's README.md says (base model, data, params, figures, judges, lineage)."""

from __future__ import annotations

import hashlib
import json
import subprocess

from neat.config import validate_params
from neat.modelcard import file_fingerprint, write_model_card
from tests.conftest import former_defaults


def project_with_run(tmp_path, evaluate=True):
    project = tmp_path / "proj"
    (project / "data").mkdir(parents=True)
    (project / "data" / "prefs.jsonl").write_text('{"chosen": "a", "rejected": "b"}\n')
    metrics = project / "out" / "metrics"
    metrics.mkdir(parents=True)
    (metrics / "train.json").write_text(json.dumps({"steps": 12, "final_loss": 0.4321, "rounds": 2, "arithmetic": {
        "native_bf16_cpu": True, "generation": "bfloat16", "policy_training": "bfloat16 autocast"}}))
    (metrics / "reward_model.json").write_text(json.dumps({"arithmetic": {"reward_training": "float32"}}))
    if evaluate:
        (metrics / "evaluate.json").write_text(json.dumps({
            "prompts": 48, "judge": "string_match", "arithmetic": {"generation": "bfloat16", "perplexity": "float32"},
            "eval_reward_mean": 0.61, "eval_reward_mean_ci_low": 0.52, "eval_reward_mean_ci_high": 0.7,
            "base_eval_reward_mean": 0.4, "base_eval_reward_mean_ci_low": 0.31, "base_eval_reward_mean_ci_high": 0.49,
            "unsafe_refusal_rate": 0.9, "unsafe_refusal_rate_ci_low": 0.8, "unsafe_refusal_rate_ci_high": 0.97,
            "base_unsafe_refusal_rate": 0.85, "base_unsafe_refusal_rate_ci_low": 0.7,
            "base_unsafe_refusal_rate_ci_high": 0.93}))
    (project / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (project / "out" / "policy").mkdir()
    for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                 ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "run"]):
        subprocess.run(["git", *args], cwd=project, check=True)
    params = validate_params(former_defaults({"paths": {"data": "data/prefs.jsonl", "out": "out"},
                              "policy": {"model": "HuggingFaceTB/SmolLM2-135M-Instruct"},
                              "train": {"lr": 3e-5, "rounds": 2}, "expand": {"k_neg": 3}}))
    return project, params


def test_card_names_base_data_params_figures_judges_and_lineage(tmp_path):
    project, params = project_with_run(tmp_path)
    card = write_model_card(project / "out" / "policy", params, project).read_text()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    lock_hash = hashlib.sha256((project / "dvc.lock").read_bytes()).hexdigest()[:16]
    data_hash = hashlib.sha256((project / "data" / "prefs.jsonl").read_bytes()).hexdigest()[:16]
    assert card.startswith("---\n") and "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card  # HF front matter
    assert "`data/prefs.jsonl`" in card and data_hash in card and file_fingerprint(project / "data/prefs.jsonl") == data_hash
    assert "lr: 3.0e-05" in card and "k_neg: 3" in card and "lora:" in card  # train, expand, policy sections
    assert "| steps | 12 |" in card and "| final_loss | 0.4321 |" in card
    assert ("Arithmetic: generation: bfloat16; policy training: bfloat16 autocast; training RM: float32; "
            "perplexity: float32 (CPU with native bf16: yes).") in card
    assert "| eval reward (mean) | 0.61 | [0.52, 0.7] | 0.4 | [0.31, 0.49] |" in card
    assert "| XSTest unsafe prompts refused | 0.9 | [0.8, 0.97] | 0.85 | [0.7, 0.93] |" in card
    assert "`string_match`" in card and "`builtin:minilm (trained on the judge split)`" in card
    assert f"git revision: `{head}`" in card and f"`{lock_hash}`" in card


def test_card_before_evaluation_says_so(tmp_path):
    project, params = project_with_run(tmp_path, evaluate=False)
    card = write_model_card(project / "out" / "policy", params, project).read_text()
    assert "Not evaluated yet" in card and "| eval reward" not in card
    assert "perplexity: float32" not in card and "policy training: bfloat16 autocast" in card
    params.paths.data = "hub:Anthropic/hh-rlhf"
    card = write_model_card(project / "out" / "policy", params, project, evaluation={}).read_text()
    assert "hub dataset, split `train`, revision `latest`" in card
    params.data.hub_revision = "0123abcd"
    card = write_model_card(project / "out" / "policy", params, project, evaluation={}).read_text()
    assert "revision `0123abcd`" in card
