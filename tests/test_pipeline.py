"""End to end on the tiny model: prepare → train-rm → expand → score → train (2 rounds), via the CLI."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from neat.cli import main
from neat.stages import stages_before
from tests.conftest import ROOT


def tiny_overrides(out):
    return [
        f"paths.out={out}",
        f"paths.checkpoints={out}-checkpoints",
        "policy.model=builtin:tiny-random",
        "policy.device=cpu",
        "data.max_train_prompts=6",
        "data.max_benign_prompts=0",
        "data.max_harmful_prompts=0",
        "reward.max_pairs=24",
        "reward.epochs=1",
        "reward.max_length=96",
        "reward.device=cpu",
        "expand.k_pos=2",
        "expand.k_neg=2",
        "expand.max_new_tokens=8",
        "train.rounds=2",
        "train.batch_size=3",
        "train.max_response_tokens=32",
        "train.max_prompt_tokens=128",
        # the bf16 paths on every machine (emulated where the CPU lacks native bf16; tiny model, cheap)
        "train.bf16_autocast=true",
        "reward.bf16_autocast=true",
        "generation.cpu_dtype=bfloat16",
    ]


def run_cli(*args):
    assert main(list(args) + ["--params", str(ROOT / "params.yaml")]) == 0


@pytest.fixture(scope="module")
def pipeline_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "out"
    sets = [x for o in tiny_overrides(out) for x in ("-S", o)]
    for stage in [s.name for s in stages_before("train")] + ["train"]:
        run_cli(stage, *sets)
    return out


def test_expansion_records_origin_and_provenance(pipeline_out):
    rows = pq.read_table(pipeline_out / "expand/candidates.parquet").to_pylist()
    prompts = {r["prompt_id"] for r in rows}
    assert len(prompts) == 6
    by_origin = {o: [r for r in rows if r["origin"] == o] for o in ("chosen", "rejected", "positive", "negative")}
    assert all(len(by_origin[o]) == 12 for o in ("positive", "negative"))
    assert len(by_origin["chosen"]) == 6
    neg = by_origin["negative"][0]
    assert neg["steering_prompt"].startswith("You are a harmful") and neg["seed"] == 0 and neg["policy_id"]
    assert json.loads(neg["generation"])["max_new_tokens"] == 8
    assert all(isinstance(r["flags"], list) for r in rows)


def test_every_stage_records_the_arithmetic_it_ran_in(pipeline_out):
    """tiny_overrides asks for the bf16 paths, emulated where the CPU has no native bf16: the records say so."""
    rm = json.loads((pipeline_out / "metrics/reward_model.json").read_text())["arithmetic"]
    expand = json.loads((pipeline_out / "expand/stats.json").read_text())["arithmetic"]
    train = json.loads((pipeline_out / "metrics/train.json").read_text())["arithmetic"]
    assert rm["reward_training"] == "bfloat16 autocast" and "generation" not in rm
    assert expand["generation"] == "bfloat16" and expand["device"] == "cpu" and "policy_training" not in expand
    assert train["generation"] == "bfloat16" and train["policy_training"] == "bfloat16 autocast"
    assert rm["native_bf16_cpu"] == expand["native_bf16_cpu"] == train["native_bf16_cpu"]


def test_scores_and_ranks_written_next_to_candidates(pipeline_out):
    rows = pq.read_table(pipeline_out / "score/candidates.parquet").to_pylist()
    ranked = [r for r in rows if r["rank"] is not None]
    assert ranked and all(isinstance(r["reward"], float) for r in ranked)
    for pid in {r["prompt_id"] for r in ranked}:
        group = sorted((r for r in ranked if r["prompt_id"] == pid), key=lambda r: r["rank"])
        assert group[0]["rank"] == 0
        assert all(a["reward"] >= b["reward"] for a, b in zip(group, group[1:]))
    stats = json.loads((pipeline_out / "score/stats.json").read_text())
    assert "positive_over_negative" in json.dumps(stats)


def test_training_ran_two_online_rounds(pipeline_out):
    log = (pipeline_out / "train/log.csv").read_text().splitlines()
    rounds = {line.split(",")[0] for line in log[1:]}
    assert rounds == {"1", "2"}
    round2 = pq.read_table(pipeline_out / "train/rounds/round_2.parquet").to_pylist()
    assert {r["round"] for r in round2} == {2} and {r["origin"] for r in round2} >= {"positive", "negative"}
    assert all(r["policy_id"] == "round1" for r in round2 if r["origin"] in ("positive", "negative"))
    assert (pipeline_out / "policy/config.json").exists()
    assert list((pipeline_out / "policy").glob("*.safetensors"))
    metrics = json.loads((pipeline_out / "metrics/train.json").read_text())
    assert metrics["steps"] == 4 and metrics["final_loss"] is not None
    phases = metrics["seconds_by_phase"]  # round 2 was sampled and scored, 4 steps taken, the dev curve drawn
    assert set(phases) == {"sampling", "dev_probes", "optimizer_steps"} and min(phases.values()) > 0
    # each figure is rounded to 0.1 s, so the phases' sum may pass the rounded total by up to 0.05 s per figure
    assert metrics["online_dev_reward"] and sum(phases.values()) <= metrics["seconds"] + 0.05 * (len(phases) + 1) + 1e-9


def test_saved_policy_carries_card_and_adapter(pipeline_out):
    policy = pipeline_out / "policy"
    assert json.loads((policy / "adapter/adapter_config.json").read_text())["base_model_name_or_path"] == \
        "builtin:tiny-random"
    card = (policy / "README.md").read_text()
    steps = json.loads((pipeline_out / "metrics/train.json").read_text())["steps"]
    assert "`builtin:tiny-random`" in card and f"| steps | {steps} |" in card
    assert "data/hh-rlhf/" in card or "data/demo/" in card
    assert "Not evaluated yet" in card and "git revision:" in card


def test_rerun_with_resume_is_a_no_op_on_finished_state(pipeline_out):
    sets = [x for o in tiny_overrides(pipeline_out) for x in ("-S", o)]
    before = (pipeline_out / "train/log.csv").read_text()
    run_cli("train", "--resume", *sets)
    assert (pipeline_out / "train/log.csv").read_text() == before
