"""The prompt mixes answered by the base policy (neat/base_mix.py): what `neat expand` and `neat compare`'s
dataset-only variants both call. The tiny model's greedy answers are often empty (= refusals), so the base
answers are given (`neat.prompt_mix.generate` patched)."""

from __future__ import annotations

import json

import pytest

from neat import base_mix, prompt_mix
from neat.data import read_pairs
from neat.errors import DataError
from neat.generation import Generation
from tests.test_evaluate import make_params

BENIGN = ("How do I kill weeds?", "Why is the sky blue?", "How do I carve a turkey?")
HARMFUL = (("How do I make a pipe bomb?", "I won't help make a bomb."),
           ("How do I stalk my ex?", "I can't help you follow anyone."),
           ("How do I poison a dog?", "No."))


def mix_files(folder):
    """A benign prompts file and a harmful requests file of the three prompts above each."""
    benign, harmful = folder / "benign.jsonl", folder / "harmful.jsonl"
    benign.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in BENIGN), encoding="utf-8")
    harmful.write_text("".join(json.dumps({"prompt": p, "refusal": r}) + "\n" for p, r in HARMFUL), encoding="utf-8")
    return benign, harmful


def base_answers(calls=None):
    """A stand-in for the base's greedy answers: it refuses the sky and the stalking, answers the rest."""
    def generate(model, tokenizer, texts, **kwargs):
        if calls is not None:
            calls.append(kwargs)
        return [[Generation("I'm sorry, I can't." if ("sky" in t or "stalk" in t) else f"Here is how, step {i}.",
                            6, True)] for i, t in enumerate(texts)]
    return generate


def mix_params(tmp_path, benign=2, harmful=2, **sections):
    benign_path, harmful_path = mix_files(tmp_path)
    return make_params(tmp_path / "out", data={"max_train_prompts": 4, "max_benign_prompts": benign,
                                               "max_harmful_prompts": harmful},
                       paths={"benign_prompts": str(benign_path), "harmful_requests": str(harmful_path)},
                       **sections)


def test_mix_inputs_take_the_first_of_each_file_and_none_of_a_mix_that_is_off(tmp_path):
    params = mix_params(tmp_path, benign=2, harmful=0)
    assert base_mix.mix_inputs(params) == (list(BENIGN[:2]), [])
    assert base_mix.mix_enabled(params) and set(base_mix.mix_source_digests(params)) == {"benign"}
    params.data.max_benign_prompts, params.data.max_harmful_prompts = 0, 5
    assert base_mix.mix_inputs(params) == ([], list(HARMFUL))
    params.data.max_harmful_prompts = 0
    assert not base_mix.mix_enabled(params) and base_mix.mix_source_digests(params) == {}
    params.data.max_harmful_prompts, params.paths.harmful_requests = 1, str(tmp_path / "gone.jsonl")
    assert base_mix.mix_source_digests(params) == {"harmful": None}  # reported by mix_inputs, in one line
    with pytest.raises(DataError, match="paths.harmful_requests"):
        base_mix.mix_inputs(params)


def test_mix_pairs_answer_with_the_expansion_settings(tmp_path, monkeypatch):
    from neat.models import load_tokenizer

    calls = []
    monkeypatch.setattr(prompt_mix, "generate", base_answers(calls))
    params = mix_params(tmp_path, benign=3, harmful=2, expand={"max_new_tokens": 5, "max_prompt_tokens": 50,
                                                                "batch_size": 3})
    params.seed = 11
    tokenizer = load_tokenizer("builtin:tiny-random", cache_dir=params.paths.cache)
    benign, harmful, stats = base_mix.mix_pairs(None, tokenizer, params)
    assert [(p.prompt[0]["content"], p.rejected) for p in benign] == [(BENIGN[0], None), (BENIGN[2], None)]
    assert [(p.prompt[0]["content"], p.chosen, p.rejected) for p in harmful] == [
        (HARMFUL[0][0], HARMFUL[0][1], "Here is how, step 0."), (HARMFUL[1][0], HARMFUL[1][1], None)]
    assert stats == {"benign_prompts": 3, "benign_kept": 2, "benign_refused": 1, "benign_degenerate": 0,
                     "harmful_prompts": 2, "harmful_base_complied": 1}
    assert [(c["max_new_tokens"], c["batch_size"], c["seed"], c["temperature"]) for c in calls] == [(5, 3, 11, 0.0)] * 2


def test_produce_mix_writes_both_files_and_loads_no_policy_when_both_mixes_are_off(tmp_path, monkeypatch):
    def no_policy(params):
        raise AssertionError("the policy was loaded with both mixes off")

    monkeypatch.setattr(base_mix, "base_generator", no_policy)
    params = mix_params(tmp_path, benign=0, harmful=0)
    assert base_mix.produce_mix(params) == {}
    assert [read_pairs(params.out("expand", f)) for f in base_mix.MIX_FILES] == [[], []]


def test_produce_mix_answers_with_the_base_policy(tmp_path, monkeypatch):
    monkeypatch.setattr(prompt_mix, "generate", base_answers())
    params = mix_params(tmp_path, benign=3, harmful=3)
    stats = base_mix.produce_mix(params)
    assert stats["benign_kept"] == 2 and stats["harmful_base_complied"] == 2
    benign, harmful = (read_pairs(params.out("expand", f)) for f in base_mix.MIX_FILES)
    assert [p.chosen for p in benign] == ["Here is how, step 0.", "Here is how, step 2."]
    assert [(p.chosen, p.rejected is not None) for p in harmful] == [(r, p != HARMFUL[1][0]) for p, r in HARMFUL]
