"""Training and evaluation diagnostics: is the policy learning what the ranking says, and is it degenerating?

Pure functions over tensors and texts, used by the trainer (per step and per round), by `evaluate`
(base vs trained) and by the report.

* `ranking_accuracy`: over every pair of real candidates of a prompt whose rewards differ, the
  fraction whose (length-normalised) log-prob order matches the reward order; a log-prob tie counts ½.
* `text_stats`: mean length, the share of repetitive responses (`is_repetitive`), distinct-1/-2
  (distinct n-grams ÷ all n-grams, pooled over the responses).
* `changed_share`: the fraction of prompts whose answer differs between two policies.
* `separation`: how well rewards separate the candidate origins (P(positive > negative), P(chosen >
  rejected) within a prompt), over the candidates that take part in ranking (`is_rankable`).
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from typing import Iterable, Sequence

import torch

from neat.encoding import ORIGINS
from neat.stats import two_sample_bootstrap_ci

_WORD = re.compile(r"\w+|[^\w\s]")


def ranking_accuracy(logps: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """(agreeing pairs, counted pairs) over [B, K] log-probs and rewards; masked slots are left out."""
    logps, rewards, mask = logps.detach().float().cpu(), rewards.detach().float().cpu(), mask.detach().cpu().bool()
    both = mask[:, :, None] & mask[:, None, :]
    better = (rewards[:, :, None] > rewards[:, None, :]) & both  # i is ranked above j
    diff = logps[:, :, None] - logps[:, None, :]
    agree = torch.where(diff > 0, 1.0, torch.where(diff == 0, 0.5, 0.0))
    return float((agree * better).sum()), int(better.sum())


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def is_repetitive(text: str, n: int = 3, threshold: float = 0.5) -> bool:
    """A response whose word n-grams repeat: fewer than `threshold` of them distinct ("I'm sorry. I'm sorry. …").

    Responses under 2n words are never repetitive by this test."""
    tokens = words(text)
    if len(tokens) < 2 * n:
        return False
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) < threshold


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Distinct word n-grams ÷ all word n-grams, pooled over `texts`; None without any n-gram."""
    grams = [tuple(t[i : i + n]) for t in (words(x) for x in texts) for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def text_stats(texts: Sequence[str]) -> dict:
    """Length and degeneration figures of a set of responses (None where undefined)."""
    texts = list(texts)
    if not texts:
        return {"n": 0, "mean_words": None, "repetition_rate": None, "empty_rate": None,
                "distinct_1": None, "distinct_2": None}
    return {
        "n": len(texts),
        "mean_words": sum(len(words(t)) for t in texts) / len(texts),
        "repetition_rate": sum(is_repetitive(t) for t in texts) / len(texts),
        "empty_rate": sum(not t.strip() for t in texts) / len(texts),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
    }


def changed_share(before: Sequence[str], after: Sequence[str]) -> float | None:
    """Fraction of positions whose text differs (whitespace at the ends ignored); None when empty."""
    if len(before) != len(after):
        raise ValueError(f"{len(before)} texts before but {len(after)} after")
    if not before:
        return None
    return sum(a.strip() != b.strip() for a, b in zip(before, after)) / len(before)


def mean_or_none(values) -> float | None:
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(values) / len(values) if values else None


def paired_gain(before: list[dict], after: list[dict], *, n_resamples: int = 1000, seed: int = 0) -> dict | None:
    """How much the reward of the same prompts' answers rose from `before` to `after` (lists of
    {"prompt_id", "reward"}): the mean paired difference with its 95 % interval over the prompts both score
    finitely. None without such a prompt."""
    from neat.stats import paired_bootstrap_ci

    first = {a["prompt_id"]: a.get("reward") for a in before}
    pairs = [(a["reward"], first[a["prompt_id"]]) for a in after
             if a.get("reward") is not None and first.get(a["prompt_id"]) is not None
             and math.isfinite(a["reward"]) and math.isfinite(first[a["prompt_id"]])]
    if not pairs:
        return None
    gain, low, high = paired_bootstrap_ci([x for x, _ in pairs], [y for _, y in pairs], n_resamples=n_resamples,
                                          seed=seed)
    return {"gain": gain, "ci_low": low, "ci_high": high, "prompts": len(pairs)}


# ---------------------------------------------------------------- reward separation by origin


def compare_scores(a: float, b: float) -> float:
    """1 if a > b, ½ if tied, 0 if a < b or either is NaN."""
    if a > b:
        return 1.0
    if a == b:
        return 0.5
    return 0.0


def is_rankable(row: dict) -> bool:
    """A candidate takes part in ranking iff its reward is finite and it is not flagged degenerate."""
    value = row.get("reward")
    return value is not None and math.isfinite(value) and not row.get("degenerate", False)


def _p_greater(groups: dict[str, dict[str, list[float]]], better: str, worse: str) -> dict:
    """P(reward(better) > reward(worse)) over every better×worse pair within the same prompt (ties ½), with a
    95 % interval that resamples prompts (a prompt's pairs share its candidates)."""
    from neat.stats import ratio_ci

    wins, pairs, margins = [], [], 0.0
    for by_origin in groups.values():
        a, b = by_origin.get(better, []), by_origin.get(worse, [])
        if not a or not b:
            continue
        wins.append(sum(compare_scores(x, y) for x in a for y in b))
        pairs.append(len(a) * len(b))
        margins += sum(x - y for x in a for y in b)
    n_pairs = sum(pairs)
    p, low, high = ratio_ci(wins, pairs) if pairs else (None, None, None)
    return {"p": p, "ci_low": low, "ci_high": high, "pairs": n_pairs, "prompts": len(pairs),
            "mean_margin": margins / n_pairs if n_pairs else None}


def separation(rows: Iterable[dict]) -> dict:
    """How well rewards separate the candidate origins, over ranked candidates only (see `is_rankable`).

    `by_origin`: n, n_excluded (NaN/inf reward or degenerate), mean and population std of the reward.
    `positive_over_negative` / `chosen_over_rejected`: p = P(reward(a) > reward(b)) over all a×b
    pairs within the same prompt, ties counting ½ (pooled over pairs, not averaged per prompt), with
    its 95 % interval over prompts, the number of pairs and prompts and the mean reward margin. Values are
    None when undefined.
    """
    rows = list(rows)
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        counts[row["origin"]] += 1
        if is_rankable(row):
            groups[row["prompt_id"]][row["origin"]].append(float(row["reward"]))
    by_origin = {}
    for origin in list(ORIGINS) + sorted(set(counts) - set(ORIGINS)):
        values = [v for g in groups.values() for v in g.get(origin, [])]
        by_origin[origin] = {
            "n": len(values),
            "n_excluded": counts[origin] - len(values),
            "mean": statistics.fmean(values) if values else None,
            "std": statistics.pstdev(values) if values else None,
        }
    return {
        "by_origin": by_origin,
        "positive_over_negative": _p_greater(groups, "positive", "negative"),
        "chosen_over_rejected": _p_greater(groups, "chosen", "rejected"),
    }


def _auc(pos: list[float], neg: list[float]) -> float:
    """P(x > y) for x in `pos`, y in `neg`, ties ½ (Mann-Whitney U from average ranks)."""
    values = sorted([(v, 1) for v in pos] + [(v, 0) for v in neg])
    rank_sum, i = 0.0, 0
    while i < len(values):
        j = i
        while j < len(values) and values[j][0] == values[i][0]:
            j += 1
        rank_sum += sum(flag for _, flag in values[i:j]) * (i + j + 1) / 2  # average 1-based rank of the tie
        i = j
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def refusal_discrimination(scores: Sequence[float], unsafe: Sequence[bool], *, safe_compliance: float = 0.9,
                           n_resamples: int = 1000, seed: int = 0) -> dict:
    """How well a per-prompt refusal score (higher = more inclined to refuse) tells unsafe prompts from safe ones.

    `auc`: P(score of an unsafe prompt > score of a safe one), ties ½, with a bootstrap interval over prompts
    (each label resampled on its own). `unsafe_refusal_at`: the largest share of unsafe prompts a policy that
    refuses exactly the prompts above one threshold on this score could refuse while still complying with at
    least `safe_compliance` of the safe ones: training that only moves the threshold cannot do better.
    """
    pos = [float(s) for s, u in zip(scores, unsafe) if u]
    neg = [float(s) for s, u in zip(scores, unsafe) if not u]
    out = {"auc": None, "auc_ci_low": None, "auc_ci_high": None, "unsafe_refusal_at": None,
           "safe_compliance": safe_compliance, "unsafe": len(pos), "safe": len(neg)}
    if not pos or not neg:
        return out
    allowed = math.floor((1.0 - safe_compliance) * len(neg) + 1e-9)  # safe prompts that may be refused
    cut = sorted(neg, reverse=True)[allowed] if allowed < len(neg) else -math.inf  # refuse strictly above it
    out |= {"auc": _auc(pos, neg), "unsafe_refusal_at": sum(x > cut for x in pos) / len(pos)}
    if n_resamples:
        _, low, high = two_sample_bootstrap_ci(pos, neg, _auc, n_resamples=n_resamples, seed=seed)
        out |= {"auc_ci_low": low, "auc_ci_high": high}
    return out
