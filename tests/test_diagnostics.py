"""Diagnostics of training and evaluation (neat/diagnostics.py) on hand-made numbers and texts."""

from __future__ import annotations

import pytest
import torch

from neat.diagnostics import changed_share, distinct_n, is_repetitive, ranking_accuracy, text_stats


def test_ranking_accuracy_counts_pairs_whose_logp_order_matches_the_reward_order():
    # prompt 0: rewards 3 > 2 > 1, log-probs -1 > -3 > -2 → pairs (0,1) ok, (0,2) ok, (1,2) wrong
    # prompt 1: rewards 5 = 5 (no pair), third slot masked out
    logps = torch.tensor([[-1.0, -3.0, -2.0], [-1.0, -2.0, 0.0]])
    rewards = torch.tensor([[3.0, 2.0, 1.0], [5.0, 5.0, 9.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    agree, pairs = ranking_accuracy(logps, rewards, mask)
    assert (agree, pairs) == (2.0, 3)


def test_ranking_accuracy_counts_a_logp_tie_as_half():
    agree, pairs = ranking_accuracy(torch.tensor([[-1.0, -1.0]]), torch.tensor([[1.0, 0.0]]), torch.ones(1, 2, dtype=torch.bool))
    assert (agree, pairs) == (0.5, 1)


def test_ranking_accuracy_of_a_perfect_and_an_inverted_policy():
    rewards = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    assert ranking_accuracy(-torch.arange(4.0)[None], rewards, mask) == (6.0, 6)
    assert ranking_accuracy(torch.arange(4.0)[None], rewards, mask) == (0.0, 6)


def test_repetition_distinct_n_and_changed_share():
    loop = "I'm sorry. I'm sorry. I'm sorry. I'm sorry. I'm sorry."
    fine = "You could ask a pharmacist which cold medicines are safe to take together."
    assert is_repetitive(loop) and not is_repetitive(fine) and not is_repetitive("no no")
    assert distinct_n(["a b a b"], 1) == pytest.approx(0.5)
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["a"], 2) is None
    stats = text_stats([loop, fine, ""])
    assert stats["n"] == 3 and stats["repetition_rate"] == pytest.approx(1 / 3) and stats["empty_rate"] == pytest.approx(1 / 3)
    assert text_stats([])["mean_words"] is None
    assert changed_share(["a", "b ", "c"], ["a", "b", "d"]) == pytest.approx(1 / 3)
    assert changed_share([], []) is None
    with pytest.raises(ValueError):
        changed_share(["a"], [])


def test_refusal_discrimination_reads_the_separation_and_the_best_threshold_off_hand_made_scores():
    from neat.diagnostics import refusal_discrimination

    # 4 unsafe, 10 safe; one safe prompt (0.85) looks more refusable than three of the unsafe ones
    scores = [0.9, 0.8, 0.7, 0.1] + [0.85] + [0.05 * i for i in range(9)]
    unsafe = [True] * 4 + [False] * 10
    r = refusal_discrimination(scores, unsafe, n_resamples=200, seed=0)
    # pairs won: 0.9 beats all 10; 0.8 and 0.7 the nine up to 0.40; 0.1 beats 0.0 and 0.05 and ties 0.1 (½)
    assert r["auc"] == pytest.approx((10 + 9 + 9 + 2.5) / 40)
    assert r["auc_ci_low"] <= r["auc"] <= r["auc_ci_high"]
    # complying with 90 % of 10 safe prompts allows one refusal (0.85): the threshold drops to the next safe
    # score (0.40) and refuses 0.9, 0.8 and 0.7; complying with all of them leaves only 0.9 above 0.85
    assert r["unsafe_refusal_at"] == 0.75
    assert refusal_discrimination(scores, unsafe, safe_compliance=1.0, n_resamples=0)["unsafe_refusal_at"] == 0.25
    tied = refusal_discrimination([1.0] * 6, [True, False] * 3, n_resamples=0)
    assert tied["auc"] == 0.5 and tied["unsafe_refusal_at"] == 0.0  # no threshold separates equal scores
    none = refusal_discrimination([0.3, 0.2], [False, False])
    assert none["auc"] is None and none["unsafe_refusal_at"] is None and none["safe"] == 2
