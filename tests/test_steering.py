"""Steered sampling (the expansion library): which steering prompts get in-context demonstrations."""

from __future__ import annotations

from neat.config import validate_params
from neat.data import read_preferences
from neat.models import load_policy
from neat.steering import sample_candidates, select_prompts
from tests.conftest import ROOT, former_defaults


def demo_pairs_and_tiny_model():
    pairs = read_preferences(ROOT / "data/demo/hh_demo.jsonl").pairs
    model, tokenizer = load_policy("builtin:tiny-random", cache_dir=str(ROOT / ".cache" / "neat"), device="cpu")
    return pairs, model, tokenizer


def record_generated_prompts(monkeypatch) -> list[list[str]]:
    """The prompt texts of every `generate` call the expansion makes from now on, one list per call."""
    import neat.steering

    seen = []
    real_generate = neat.steering.generate
    monkeypatch.setattr(neat.steering, "generate", lambda m, t, texts, **kw: seen.append(list(texts))
                        or real_generate(m, t, texts, **kw))
    return seen


def test_demonstrations_go_only_to_the_steering_prompts_named_in_demo_origins():
    pairs, model, tokenizer = demo_pairs_and_tiny_model()
    for origins, want in ((["positive", "negative"], {"positive": 1, "negative": 1}),
                          (["negative"], {"positive": 0, "negative": 1}), ([], {"positive": 0, "negative": 0})):
        cfg = validate_params(former_defaults({"expand": {"k_pos": 1, "k_neg": 1, "n_demos": 1, "max_new_tokens": 3,
                                          "demo_origins": origins}})).expand
        rows, _ = sample_candidates(model, tokenizer, select_prompts(pairs, 2), pairs, cfg, seed=0,
                                    policy_id="t", round_=1, progress=False)
        assert {r["origin"]: r["n_demos"] for r in rows} == want, origins


def test_a_negative_opening_begins_only_the_negative_answers_and_stays_in_their_responses(monkeypatch):
    """The opening is written into the negative prompts' assistant turn (the policy continues it) and is
    the start of each negative candidate; positives are untouched, and without it nothing changes."""
    pairs, model, tokenizer = demo_pairs_and_tiny_model()
    seen = record_generated_prompts(monkeypatch)
    results = {}
    for opening in ("", "Sure, here is how:"):
        cfg = validate_params(former_defaults({"expand": {"k_pos": 1, "k_neg": 1, "n_demos": 0, "max_new_tokens": 3,
                                                          "negative_opening": opening}})).expand
        rows, _ = sample_candidates(model, tokenizer, select_prompts(pairs, 2), pairs, cfg, seed=0,
                                    policy_id="t", round_=1, progress=False)
        results[opening] = {o: [r["response"] for r in rows if r["origin"] == o] for o in ("positive", "negative")}
    pos_plain, neg_plain, pos_open, neg_open = seen  # one generate call per steering prompt and run
    assert pos_open == pos_plain and all(not t.endswith("Sure, here is how:") for t in pos_open + neg_plain)
    assert neg_open == [t + "Sure, here is how:" for t in neg_plain]
    assert results["Sure, here is how:"]["positive"] == results[""]["positive"]
    assert all(r.startswith("Sure, here is how:") for r in results["Sure, here is how:"]["negative"])
    assert not any(r.startswith("Sure") for r in results[""]["negative"])


def test_an_unset_negative_opening_leaves_the_expansion_fingerprint_of_earlier_runs():
    from neat.expand import expand_fingerprint

    params = validate_params(former_defaults({}))
    before_the_options = params.expand.model_dump(mode="json")
    before_the_options.pop("negative_opening")
    before_the_options.pop("demo_scope")
    assert params.expand.key() == before_the_options
    train = ROOT / "data/demo/hh_demo.jsonl"
    plain = expand_fingerprint(params, train, "p")
    params.expand.negative_opening = "Sure!"
    assert params.expand.key()["negative_opening"] == "Sure!" and expand_fingerprint(params, train, "p") != plain
    params.expand.negative_opening = ""
    params.expand.demo_scope = "round"
    assert params.expand.key()["demo_scope"] == "round" and expand_fingerprint(params, train, "p") != plain


def test_round_scoped_demonstrations_are_one_draw_outside_the_rounds_prompts_that_the_loop_prefills_once(monkeypatch):
    import neat.steering
    from neat.generation import shared_prefix_length

    pairs, model, tokenizer = demo_pairs_and_tiny_model()
    seen = record_generated_prompts(monkeypatch)
    groups = select_prompts(pairs, 4)
    own = {g[0].prompt[-1]["content"] for g in groups}
    for scope in ("prompt", "round"):
        cfg = validate_params(former_defaults({"expand": {"k_pos": 1, "k_neg": 0, "n_demos": 2, "max_new_tokens": 3,
                                                          "demo_origins": ["positive"], "demo_scope": scope}})).expand
        rows, _ = sample_candidates(model, tokenizer, groups, pairs, cfg, seed=0, policy_id="t", round_=1,
                                    progress=False)
        assert [r["n_demos"] for r in rows] == [2] * 4
    per_prompt, per_round = seen
    demos = neat.steering.pick_round_demos(pairs, {g[0].prompt_id for g in groups}, 2, 0, 1, "chosen")
    assert not {t["content"] for t in demos if t["role"] == "user"} & own  # no prompt sees its own responses
    assert all(demos[1]["content"] in t and demos[3]["content"] in t for t in per_round)
    ids = lambda texts: [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    demo_end = per_round[0].index(demos[3]["content"]) + len(demos[3]["content"])
    shared_chars = len(tokenizer.decode(ids(per_round)[0][: shared_prefix_length(ids(per_round))]))
    assert shared_chars >= demo_end > 0  # the shared start the loop prefills once covers the demonstrations
    assert shared_prefix_length(ids(per_prompt)) < shared_prefix_length(ids(per_round))
    assert neat.steering.pick_round_demos(pairs, set(), 2, 0, 2, "chosen") != neat.steering.pick_round_demos(
        pairs, set(), 2, 0, 1, "chosen")  # each round draws anew
