"""Evaluation on the tiny model: every output file, the metrics on hand-made inputs, the base cache (compare: test_compare.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from neat.prepare import prepare
from neat.errors import DataError
from tests.conftest import ROOT, make_test_params

CACHE = str(ROOT / ".cache" / "neat")


def make_params(out, **sections):
    tree = {
        "seed": 0,
        "paths": {"out": str(out), "cache": CACHE},
        "data": {"max_train_prompts": 4},
        "policy": {"model": "builtin:tiny-random", "device": "cpu", "lora": {"enabled": False}},
        "reward": {"epochs": 1, "max_pairs": 8, "batch_size": 8, "max_length": 64, "device": "cpu"},
        "expand": {"k_pos": 1, "k_neg": 1, "max_new_tokens": 4, "n_demos": 0, "batch_size": 8},
        "train": {"rounds": 1, "batch_size": 2, "lr": 1e-3, "max_prompt_tokens": 96, "max_response_tokens": 16},
        "evaluate": {"max_prompts": 4, "max_safety_prompts": 6, "max_new_tokens": 4, "n_samples": 1,
                     "batch_size": 4, "bootstrap": 100},
    }
    return make_test_params(tree, **sections)


def fake_trained_policy(params):
    from neat.models import load_policy, save_model

    model, tok = load_policy("builtin:tiny-random", cache_dir=CACHE, device="cpu", seed=1)
    save_model(model, tok, params.out("policy"))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """prepare → eval RM (1 epoch on 8 judge pairs) → fake trained policy → evaluate with the learned judge,
    string matching beside it."""
    from neat.evaluate import evaluate, train_eval_rm

    params = make_params(tmp_path_factory.mktemp("eval") / "out",
                         evaluate={"judge": "learned", "also_judges": ["string_match", "learned"]})
    prepare(params)
    rm_metrics = train_eval_rm(params, progress=False)
    fake_trained_policy(params)
    metrics = evaluate(params, progress=False)
    return params, rm_metrics, metrics


def test_eval_reward_model_is_trained_on_the_judge_split(evaluated):
    params, rm_metrics, _ = evaluated
    assert (params.out("eval_reward_model") / "config.json").is_file()
    saved = json.loads(params.out("metrics", "eval_reward_model.json").read_text())
    assert saved == rm_metrics
    assert saved["trained"] and saved["seed"] == 1 and saved["judge_pairs"] == 8 and saved["steps"] == 1
    assert 0 <= saved["eval_accuracy"] <= 1


def test_eval_reward_model_trains_in_float32_whatever_reward_autocast_says(tmp_path, monkeypatch):
    """reward.bf16_autocast speeds up the training RM; the judge (evaluation RM) keeps float32."""
    import neat.reward
    from neat.evaluate import train_eval_rm
    from neat.reward import train_rm

    seen = []
    real = neat.reward.train_bradley_terry
    monkeypatch.setattr(neat.reward, "train_bradley_terry",
                        lambda *a, autocast=None, **kw: seen.append(autocast) or real(*a, autocast=autocast, **kw))
    params = make_params(tmp_path / "out", reward={"bf16_autocast": True})
    prepare(params)
    train_eval_rm(params, progress=False)
    assert seen == [None]
    train_rm(params)
    assert seen == [None, "cpu"]  # the training RM does follow it


def test_evaluate_writes_every_file(evaluated):
    params, _, metrics = evaluated
    gens = [json.loads(x) for x in params.out("evaluate", "generations.jsonl").read_text().splitlines()]
    assert len(gens) == 4
    for row in gens:
        for key in ("prompt", "chosen", "base_response", "trained_response", "base_reward", "trained_reward",
                    "base_refused", "trained_refused", "winner", "base_chosen_nll", "trained_chosen_nll"):
            assert key in row, key
        assert isinstance(row["base_reward"], float) and isinstance(row["trained_refused"], bool)
        assert len(row["base_samples"]) == len(row["trained_samples"]) == 1
    safety = [json.loads(x) for x in params.out("evaluate", "safety.jsonl").read_text().splitlines()]
    assert len(safety) == 6 and {r["label"] for r in safety} == {"safe", "unsafe"}
    assert params.out("evaluate", "rewards.csv").read_text().startswith("prompt_index,prompt_id,base_reward")
    saved = json.loads(params.out("metrics", "evaluate.json").read_text())
    assert saved == metrics
    assert metrics["judge"] == "learned" and metrics["tag"] == "trained" and metrics["prompts"] == 4
    for key in ("eval_reward_mean", "base_eval_reward_mean", "win_rate", "perplexity", "base_perplexity",
                "unsafe_refusal_rate", "safe_compliance_rate", "base_unsafe_refusal_rate",
                "sampled_eval_reward_mean"):
        assert metrics[key] is not None, key
        if key + "_ci_low" in metrics:
            assert metrics[key + "_ci_low"] <= metrics[key] + 1e-9 <= metrics[key + "_ci_high"] + 2e-9, key
    assert metrics["eval_reward_mean"] == pytest.approx(np.mean([r["trained_reward"] for r in gens]))
    assert metrics["wins"] + metrics["ties"] + metrics["losses"] == 4
    assert set(metrics["safety"]["trained"]["by_type"]) == {r["type"] for r in safety}
    assert math.isfinite(metrics["perplexity"]) and metrics["perplexity"] > 1
    from neat.models import arithmetic

    assert metrics["arithmetic"] == arithmetic(params, "generation", "perplexity")  # what its answers were made in


def test_base_generations_are_cached(evaluated, monkeypatch):
    import neat.evaluate as ev

    params, _, first = evaluated
    calls = []
    real = ev.generate_responses
    monkeypatch.setattr(ev, "generate_responses", lambda *a, **k: calls.append(k["desc"]) or real(*a, **k))
    again = ev.evaluate(params, progress=False)
    assert calls == ["generate trained", "safety trained"]  # the base came from the cache
    assert again["base_generations_cached"] and again["base_eval_reward_mean"] == first["base_eval_reward_mean"]


def test_generations_of_another_cpu_arithmetic_are_not_taken_from_the_cache(evaluated, monkeypatch):
    """generation.cpu_dtype is part of the cache key as it resolves on the machine: a bf16 run (or `auto` on a CPU
    with native bf16) never reports the float32 answers cached before it, nor the other way round."""
    import neat.evaluate as ev
    import neat.models

    params, _, _ = evaluated

    def with_cpu_dtype(name):
        return params.model_copy(update={"generation": params.generation.model_copy(update={"cpu_dtype": name})})

    keys = {}
    for native in (False, True):
        monkeypatch.setattr(neat.models, "native_bf16", lambda device, native=native: native)
        keys[native] = {name: ev._generation_settings(with_cpu_dtype(name)) for name in ("auto", "float32", "bfloat16")}
    assert keys[False]["auto"] == keys[False]["float32"] != keys[False]["bfloat16"]
    assert keys[True]["auto"] == keys[True]["bfloat16"] != keys[True]["float32"]

    calls = []
    real = ev.generate_responses
    monkeypatch.setattr(ev, "generate_responses", lambda *a, **k: calls.append(k["desc"]) or real(*a, **k))
    monkeypatch.setattr(neat.models, "native_bf16", lambda device: False)
    again = ev.evaluate(with_cpu_dtype("bfloat16"), progress=False)
    assert "generate base" in calls and "safety base" in calls
    assert not again["base_generations_cached"]


# ---------------------------------------------------------------- metrics on hand-made inputs


def _record(base, trained, refused=(False, False), nll=(2.0, 1.0), tokens=2):
    return {"prompt_id": "x", "base_reward": base, "trained_reward": trained, "base_refused": refused[0],
            "trained_refused": refused[1], "base_chosen_nll": nll[0], "trained_chosen_nll": nll[1],
            "chosen_tokens": tokens, "base_samples": [], "trained_samples": []}


def test_degenerate_answer_loses_whatever_its_reward():
    """A repetitive or empty greedy answer loses to a clean one even when the evaluation RM prefers it;
    two clean (or two degenerate) answers compare by reward, as in the plain win rate."""
    from neat.evaluate import evaluation_metrics

    loop = "I'm not sure what you mean. " * 8
    answers = [(0.0, 1.0, "Sure, here is how.", loop),            # RM prefers the loop: plain win, here a loss
               (1.0, 0.0, loop, "I can't help with that."),          # base loops: a win though its reward is higher
               (0.0, 1.0, "One answer.", "Another answer."),         # clean vs clean: by reward, a win
               (1.0, 0.0, loop, loop.upper()),                       # both loop: by reward, a loss
               (0.0, 1.0, "An answer.", "")]                          # empty: a loss
    records = [_record(b, t) | {"base_response": br, "trained_response": tr} for b, t, br, tr in answers]
    m = evaluation_metrics(records, [], n_resamples=200, seed=0)
    assert m["win_rate"] == pytest.approx(3 / 5)
    assert m["win_rate_degenerate_loses"] == pytest.approx(2 / 5)
    assert m["win_rate_degenerate_loses_ci_low"] <= 0.4 <= m["win_rate_degenerate_loses_ci_high"]


def test_metrics_on_a_known_case():
    from neat.evaluate import evaluation_metrics

    records = [_record(0.0, 1.0), _record(1.0, 1.0), _record(2.0, 1.0, refused=(True, True)), _record(0.0, 3.0)]
    safety = [{"id": str(i), "prompt": "p", "type": t, "label": lab, "base_refused": b, "trained_refused": tr}
              for i, (t, lab, b, tr) in enumerate([("a", "unsafe", False, True), ("a", "unsafe", False, True),
                                                    ("b", "safe", False, False), ("b", "safe", True, False)])]
    m = evaluation_metrics(records, safety, n_resamples=200, seed=0)
    assert m["win_rate"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert m["eval_reward_mean"] == pytest.approx(1.5) and m["base_eval_reward_mean"] == pytest.approx(0.75)
    assert m["eval_reward_diff"] == pytest.approx(0.75)
    assert m["perplexity"] == pytest.approx(math.exp(0.5)) and m["base_perplexity"] == pytest.approx(math.exp(1.0))
    assert m["perplexity_ratio"] == pytest.approx(math.exp(-0.5))
    # every item has the same NLL per token: the bootstrap interval has zero width
    assert m["perplexity_ci_low"] == pytest.approx(m["perplexity_ci_high"])
    assert m["unsafe_refusal_rate"] == 1.0 and m["base_unsafe_refusal_rate"] == 0.0
    assert m["safe_compliance_rate"] == 1.0 and m["base_safe_compliance_rate"] == 0.5
    assert m["unsafe_refusal_diff"] == 1.0 and m["unsafe_refusal_diff_significant"]
    assert m["safety"]["trained"]["by_type"]["a"]["refusal_rate"] == 1.0
    assert m["heldout_refusal_rate"] == 0.25 and m["base_heldout_refusal_rate"] == 0.25  # with its interval
    assert m["heldout_refusal_rate_ci_low"] == 0.0 and 0.5 <= m["heldout_refusal_rate_ci_high"] < 1.0


def test_safety_is_reported_under_every_judge_beside_its_agreement_with_people(evaluated):
    from neat.judges import StringMatchJudge

    params, _, metrics = evaluated
    safety = [json.loads(x) for x in params.out("evaluate", "safety.jsonl").read_text().splitlines()]
    by_judge = metrics["safety_by_judge"]
    assert list(by_judge) == ["learned", "string_match"]  # the headline judge first, a repeated one once
    for row in safety:
        assert row["trained_refused_by"]["learned"] == row["trained_refused"]
        assert row["base_refused_by"]["learned"] == row["base_refused"]
    judge = StringMatchJudge()
    for who, prefix in (("trained", ""), ("base", "base_")):
        refused = judge([r[f"{who}_response"] for r in safety])
        assert refused == [r[f"{who}_refused_by"]["string_match"] for r in safety]
        unsafe = [f for f, r in zip(refused, safety) if r["label"] == "unsafe"]
        safe = [not f for f, r in zip(refused, safety) if r["label"] == "safe"]
        assert by_judge["string_match"][f"{prefix}unsafe_refusal_rate"] == pytest.approx(np.mean(unsafe))
        assert by_judge["string_match"][f"{prefix}safe_compliance_rate"] == pytest.approx(np.mean(safe))
    for key in ("unsafe_refusal_rate", "safe_compliance_rate", "base_unsafe_refusal_rate", "unsafe_refusal_diff"):
        assert by_judge["learned"][key] == metrics[key], key
    labels = params.paths.judge_labels
    from neat.judges import judge_agreement

    assert by_judge["string_match"]["judge_agreement"] == judge_agreement(judge, labels, n_resamples=100, seed=0)["rate"]
    assert by_judge["learned"]["judge_agreement"] == metrics["judge_agreement"]
    assert all(0 <= f["judge_agreement_ci_low"] <= f["judge_agreement"] <= f["judge_agreement_ci_high"] <= 1
               for f in by_judge.values())


def test_safety_figures_per_judge_come_from_each_judges_own_flags():
    from neat.evaluate import evaluation_metrics

    records = [_record(0.0, 1.0), _record(1.0, 0.0)]
    flags = [  # (label, base, trained) under "a", then under "b"
        ("unsafe", (False, True), (False, False)), ("unsafe", (False, True), (True, True)),
        ("safe", (False, False), (False, True)), ("safe", (True, False), (False, True))]
    safety = [{"id": str(i), "prompt": "p", "type": "t", "label": lab, "base_refused": a[0], "trained_refused": a[1],
               "base_refused_by": {"a": a[0], "b": b[0]}, "trained_refused_by": {"a": a[1], "b": b[1]}}
              for i, (lab, a, b) in enumerate(flags)]
    m = evaluation_metrics(records, safety, n_resamples=200, seed=0)
    a, b = m["safety_by_judge"]["a"], m["safety_by_judge"]["b"]
    assert (a["unsafe_refusal_rate"], a["base_unsafe_refusal_rate"]) == (1.0, 0.0)
    assert (a["safe_compliance_rate"], a["base_safe_compliance_rate"]) == (1.0, 0.5)
    assert (b["unsafe_refusal_rate"], b["base_unsafe_refusal_rate"]) == (0.5, 0.5)
    assert (b["safe_compliance_rate"], b["base_safe_compliance_rate"]) == (0.0, 1.0)
    assert b["safe_compliance_diff"] == -1.0 and b["safe_compliance_diff_significant"]
    assert a["unsafe_refusal_diff"] == 1.0 and b["unsafe_refusal_diff"] == 0.0
    for key in ("unsafe_refusal_rate", "safe_compliance_rate", "unsafe_refusal_diff", "safe_compliance_diff"):
        assert m[key] == a[key], key  # the headline keys are judge "a"'s, whose flags are the rows' own
    assert evaluation_metrics(records, [{k: v for k, v in r.items() if "_by" not in k} for r in safety],
                              n_resamples=200, seed=0)["safety_by_judge"] == {}  # files written before it


def test_stage_metrics_come_from_the_local_evaluate_modules(monkeypatch):
    import neat.metrics
    from neat import evaluate as ev

    loaded = []
    real = neat.metrics.load_metric

    def spy(name, **kwargs):
        loaded.append(name)
        return real(name, **kwargs)

    monkeypatch.setattr(neat.metrics, "load_metric", spy)
    ev._metric.cache_clear()
    records = [_record(0.0, 1.0), _record(1.0, 1.0), _record(2.0, 1.0), _record(0.0, 3.0)]
    safety = [{"id": str(i), "prompt": "p", "type": "t", "label": lab, "base_refused": False, "trained_refused": r}
              for i, (lab, r) in enumerate([("unsafe", True), ("unsafe", False), ("safe", False), ("safe", True)])]
    m = ev.evaluation_metrics(records, safety, n_resamples=200, seed=3)
    ev._metric.cache_clear()
    assert {"win_rate", "refusal_rate"} <= set(loaded)
    module = real("win_rate").compute(scores_a=[1.0, 1.0, 1.0, 3.0], scores_b=[0.0, 1.0, 2.0, 0.0],
                                      n_resamples=200, seed=3)
    assert (m["win_rate"], m["win_rate_ci_low"], m["win_rate_ci_high"]) == (module["win_rate"], module["ci_low"],
                                                                           module["ci_high"])
    rates = real("refusal_rate").compute(refused=[1, 0, 0, 1], labels=["unsafe", "unsafe", "safe", "safe"],
                                         n_resamples=200, seed=3)
    assert m["unsafe_refusal_rate"] == rates["unsafe_refusal_rate"] == 0.5
    assert m["safe_compliance_rate_ci_low"] == rates["safe_compliance_rate_ci_low"]


def test_safety_subset_is_stratified_seeded_and_in_file_order():
    from neat.evaluate import safety_subset

    rows = [{"id": str(i), "prompt": f"p{i}", "type": "t", "label": "safe" if i < 30 else "unsafe"} for i in range(40)]
    sub = safety_subset(rows, 8, seed=0)
    assert len(sub) == 8 and [r["label"] for r in sub].count("unsafe") == 2
    assert [int(r["id"]) for r in sub] == sorted(int(r["id"]) for r in sub)
    assert sub == safety_subset(rows, 8, seed=0) and sub != safety_subset(rows, 8, seed=1)
    assert safety_subset(rows, None, seed=0) == rows


def test_the_safety_prompts_are_drawn_with_evaluate_seed_not_the_training_seed():
    from neat.config import load_params
    from neat.evaluate import evaluation_safety_prompts

    params = load_params(ROOT / "params.yaml")
    drawn = evaluation_safety_prompts(params)
    assert len(drawn) == params.evaluate.max_safety_prompts
    assert evaluation_safety_prompts(load_params(ROOT / "params.yaml", ["seed=1"])) == drawn  # another training seed
    assert evaluation_safety_prompts(load_params(ROOT / "params.yaml", ["evaluate.seed=1"])) != drawn


def test_answer_diagnostics_count_changed_and_repetitive_answers():
    from neat.diagnostics import words
    from neat.evaluate import answer_diagnostics

    loop = "I'm sorry. I'm sorry. I'm sorry. I'm sorry. I'm sorry."
    records = [{"base_response": "Same answer.", "trained_response": "Same answer. "},
               {"base_response": "Call a locksmith.", "trained_response": loop},
               {"base_response": "Here is how.", "trained_response": "I can't help with that."},
               {"base_response": loop, "trained_response": "Please talk to a doctor."}]
    d = answer_diagnostics(records, n_resamples=200, seed=0)
    assert d["changed_share"] == 0.75 and d["changed_share_ci_low"] <= 0.75 <= d["changed_share_ci_high"]
    assert d["repetition_rate"] == 0.25 and d["base_repetition_rate"] == 0.25
    assert 0 < d["distinct_2"] <= 1 and d["mean_words"] > d["base_mean_words"]
    # intervals over answers: a resample of loops only has few distinct bigrams, of short answers only few words
    assert d["distinct_2_ci_low"] < d["distinct_2"] <= d["distinct_2_ci_high"] <= 1
    lengths = [len(words(r["trained_response"])) for r in records]
    assert min(lengths) <= d["mean_words_ci_low"] < d["mean_words"] < d["mean_words_ci_high"] <= max(lengths)
    assert answer_diagnostics([], n_resamples=200, seed=0) == {}


def test_online_curve_is_scored_per_probe_in_order(tmp_path):
    from neat.evaluate import online_eval_rewards, read_online_curve
    from neat.io import write_json_atomic

    params = make_test_params({"paths": {"out": str(tmp_path / "out")}})
    assert read_online_curve(params) == []
    answer = {"prompt_id": "d", "prompt": [{"role": "user", "content": "q"}], "response": "r"}
    online = [{"round": 1, "dev": {"answers": [answer, answer]}}, {"round": 2, "p_positive_over_negative": None},
              {"round": 3, "dev": {"answers": [answer]}}]
    write_json_atomic(params.out("train", "online.json"), online)
    probes = read_online_curve(params)
    assert [p["round"] for p in probes] == [1, 3]  # an entry without dev answers is not a probe
    assert online_eval_rewards(probes, [1.0, 3.0, float("nan")]) == {
        "online_dev_eval_reward": [2.0, None], "online_dev_eval_reward_ci": [[1.0, 3.0], None],
        "online_dev_eval_reward_gain": None}  # the last probe has no finite score to pair
    two = [dict(answer, prompt_id="a"), dict(answer, prompt_id="b")]
    curve = online_eval_rewards([{"round": 1, "dev": {"answers": two}}, {"round": 2, "dev": {"answers": two[::-1]}}],
                                [1.0, 2.0, 4.0, 2.0])  # paired by prompt: a 1 -> 2, b 2 -> 4
    assert curve["online_dev_eval_reward_gain"] == {"gain": 1.5, "ci_low": 1.0, "ci_high": 2.0, "prompts": 2}
    params.out("train", "online.json").write_text("[{")
    with pytest.raises(DataError, match="online.json"):
        read_online_curve(params)


def test_perplexity_rows_batched_by_length_come_back_in_input_order():
    """response_nll sorts rows by length before batching: each row's NLL equals its own one-row pass,
    in the caller's order; bf16 autocast stays within 2 % of float32 per row."""
    from neat.evaluate import response_nll
    from neat.models import load_policy

    model, tok = load_policy("builtin:tiny-random", cache_dir=CACHE, device="cpu", seed=1)
    prompts = [[{"role": "user", "content": "word " * n}] for n in (30, 2, 17, 1, 45, 8)]
    responses = ["a reply " * n for n in (1, 9, 3, 6, 2, 12)]
    sizes = dict(max_prompt_tokens=96, max_response_tokens=32)
    batched, counts = response_nll(model, tok, prompts, responses, batch_size=4, **sizes)
    alone = [response_nll(model, tok, [p], [r], batch_size=1, **sizes) for p, r in zip(prompts, responses)]
    assert counts == [c[0] for _, c in alone] and len(set(counts)) > 3
    assert batched == pytest.approx([n[0] for n, _ in alone], rel=1e-5)
    bf16, bf16_counts = response_nll(model, tok, prompts, responses, batch_size=4, autocast="cpu", **sizes)
    assert bf16_counts == counts
    assert bf16 == pytest.approx(batched, rel=0.02) and bf16 != batched
