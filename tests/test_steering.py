"""Steered sampling (the expansion library): which steering prompts get in-context demonstrations."""

from __future__ import annotations

from neat.config import validate_params
from neat.data import read_preferences
from neat.models import load_policy
from neat.steering import sample_candidates, select_prompts
from tests.conftest import ROOT, former_defaults


def test_demonstrations_go_only_to_the_steering_prompts_named_in_demo_origins():
    pairs = read_preferences(ROOT / "data/demo/hh_demo.jsonl").pairs
    model, tokenizer = load_policy("builtin:tiny-random", cache_dir=str(ROOT / ".cache" / "neat"), device="cpu")
    for origins, want in ((["positive", "negative"], {"positive": 1, "negative": 1}),
                          (["negative"], {"positive": 0, "negative": 1}), ([], {"positive": 0, "negative": 0})):
        cfg = validate_params(former_defaults({"expand": {"k_pos": 1, "k_neg": 1, "n_demos": 1, "max_new_tokens": 3,
                                          "demo_origins": origins}})).expand
        rows, _ = sample_candidates(model, tokenizer, select_prompts(pairs, 2), pairs, cfg, seed=0,
                                    policy_id="t", round_=1, progress=False)
        assert {r["origin"]: r["n_demos"] for r in rows} == want, origins
