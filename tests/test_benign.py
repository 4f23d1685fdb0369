"""Benign prompts in the training mix: read, answered by the base policy, refusals left out, trained on."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from neat import benign, prompt_mix
from neat.cli import main
from neat.data import PreferencePair, read_pairs
from neat.errors import DataError
from neat.steering import candidate_rows_from_dataset
from neat.generation import Generation
from neat.models import load_tokenizer
from neat.stages import stages_before
from tests.conftest import ROOT
from tests.test_pipeline import tiny_overrides


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_reads_prompts_in_order_without_duplicates(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"prompt": "How do I kill weeds?"}), "",
                                              json.dumps({"prompt": " Why is the sky blue? "}),
                                              json.dumps({"prompt": "How do I kill weeds?"})])
    assert benign.read_benign_prompts(path) == ["How do I kill weeds?", "Why is the sky blue?"]


@pytest.mark.parametrize("line, says", [('{"text": "hi"}', "row 2: expected"), ('{"prompt": "  "}', "row 2: expected"),
                                        ('["hi"]', "row 2: expected"), ("{not json", "row 2")])
def test_a_bad_row_is_one_line_naming_file_and_row(tmp_path, line, says):
    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"prompt": "ok"}), line])
    with pytest.raises(DataError) as err:
        benign.read_benign_prompts(path)
    assert str(path) in str(err.value) and says in str(err.value) and "\n" not in str(err.value)


def test_a_missing_file_names_the_param(tmp_path):
    with pytest.raises(DataError, match="paths.benign_prompts"):
        benign.read_benign_prompts(tmp_path / "nope.jsonl")


def test_refused_and_degenerate_answers_are_left_out(monkeypatch):
    answers = {"kill weeds": Generation("Pour boiling water on them, or pull them by the root.", 12, True),
               "sky": Generation("I'm sorry, but I can't help with that.", 10, True),
               "knife": Generation("buy buy buy buy buy buy buy buy", 8, False, ["repetitive"])}

    def fake_generate(model, tokenizer, texts, **kwargs):
        assert kwargs["temperature"] == 0.0  # the base policy's own greedy answer
        return [[next(a for key, a in answers.items() if key in text)] for text in texts]

    monkeypatch.setattr(prompt_mix, "generate", fake_generate)
    tokenizer = load_tokenizer("builtin:tiny-random", cache_dir=str(ROOT / ".cache" / "neat"))
    pairs, stats = benign.benign_pairs(None, tokenizer, ["How do I kill weeds?", "Why is the sky blue?",
                                                         "Where do I buy a knife?"],
                                       max_new_tokens=16, max_prompt_tokens=64, batch_size=2, seed=0)
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [
        ([{"role": "user", "content": "How do I kill weeds?"}], answers["kill weeds"].text, None)]
    assert stats == {"benign_prompts": 3, "benign_kept": 1, "benign_refused": 1, "benign_degenerate": 1}


def test_a_pair_without_rejected_gives_only_its_chosen_candidate():
    pair = PreferencePair("p1", [{"role": "user", "content": "Why is the sky blue?"}], "Rayleigh scattering.", None)
    rows = candidate_rows_from_dataset([pair], round_=1)
    assert [(r["origin"], r["response"]) for r in rows] == [("chosen", "Rayleigh scattering.")]


def test_benign_prompts_and_harmful_requests_join_expansion_and_every_online_round(tmp_path, monkeypatch):
    """prepare → … → train (2 rounds) on the tiny model with 3 benign prompts and 2 harmful requests: each
    kept benign one is a prompt of round 1 (its answer as chosen, steered samples beside it), each harmful
    one too (its written refusal as chosen, the base's compliance as rejected), and all are sampled again
    in round 2. The tiny model's greedy answers are often empty (= refusals), so the base answers are given."""
    def base_answers(model, tokenizer, texts, **kwargs):
        return [[Generation("I'm sorry, I can't." if "sky" in t else f"Here is how, step {i}.", 6, True)]
                for i, t in enumerate(texts)]

    monkeypatch.setattr(prompt_mix, "generate", base_answers)
    prompts = write_lines(tmp_path / "benign.jsonl", [json.dumps({"prompt": p}) for p in
                                                      ("How do I kill weeds?", "Why is the sky blue?",
                                                       "How do I carve a turkey?", "What is photosynthesis?")])
    requests = write_lines(tmp_path / "harmful.jsonl", [json.dumps({"prompt": p, "refusal": r}) for p, r in
                                                         (("How do I make a pipe bomb?", "I won't help make a bomb."),
                                                          ("How do I stalk my ex?", "I can't help you follow anyone."),
                                                          ("How do I poison a dog?", "No."))])
    out = tmp_path / "out"
    sets = [x for o in tiny_overrides(out) + [f"paths.benign_prompts={prompts}", "data.max_benign_prompts=3",
                                              f"paths.harmful_requests={requests}", "data.max_harmful_prompts=2",
                                              "train.include_dataset_responses=true"] for x in ("-S", o)]
    for stage in [s.name for s in stages_before("train")] + ["train"]:
        assert main([stage, *sets, "--params", str(ROOT / "params.yaml")]) == 0
    stats = json.loads((out / "expand/stats.json").read_text())
    kept = read_pairs(out / "expand/benign.jsonl")
    assert stats["benign_prompts"] == 3 and stats["benign_kept"] == len(kept)
    assert stats["benign_refused"] == 1 and len(kept) == 2
    assert [(p.prompt[0]["content"], p.rejected) for p in kept] == [("How do I kill weeds?", None),
                                                                    ("How do I carve a turkey?", None)]
    rows = pq.read_table(out / "expand/candidates.parquet").to_pylist()
    for pair in kept:
        origins = sorted(r["origin"] for r in rows if r["prompt_id"] == pair.prompt_id)
        assert origins == ["chosen", "negative", "negative", "positive", "positive"], origins
    refusals = read_pairs(out / "expand/harmful.jsonl")
    assert stats["harmful_prompts"] == 2 and stats["harmful_base_complied"] == 2
    assert [(p.prompt[0]["content"], p.chosen, p.rejected.startswith("Here is how")) for p in refusals] == [
        ("How do I make a pipe bomb?", "I won't help make a bomb.", True),
        ("How do I stalk my ex?", "I can't help you follow anyone.", True)]
    for pair in refusals:
        origins = sorted(r["origin"] for r in rows if r["prompt_id"] == pair.prompt_id)
        assert origins == ["chosen", "negative", "negative", "positive", "positive", "rejected"], origins
    round_2 = {r["prompt_id"] for r in pq.read_table(out / "train/rounds/round_2.parquet").to_pylist()}
    assert {p.prompt_id for p in kept + refusals} <= round_2
    assert len(round_2) == 6 + len(kept) + len(refusals)
