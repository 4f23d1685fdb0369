"""Scored candidate rows → the prompts the trainer ranks (`PromptCandidates`), and each round's order."""

from __future__ import annotations

import math

import torch

from neat.encoding import PromptCandidates
from neat.errors import TrainingError

# `train.pair_labels: origin`: the label that stands for the reward (RLCD: the steering decides, no reward model)
ORIGIN_LABELS = {"positive": 1.0, "chosen": 1.0, "negative": 0.0, "rejected": 0.0}
# `train.pair_labels: tiers`: candidates of these origins rank below all others of their prompt
LOWER_TIER = frozenset(o for o, label in ORIGIN_LABELS.items() if label == 0.0)
PAIR_LABELS = ("reward", "origin", "tiers")


def groups_from_scored(rows: list[dict], degenerate: str = "exclude", labels: str = "reward") -> list[PromptCandidates]:
    """Ranked candidates grouped by prompt, in file order; unranked ones (NaN reward, degenerate) are left out.

    `labels="origin"`: each candidate's reward is replaced by its origin's label (`ORIGIN_LABELS`:
    positive-steered and chosen 1, negative-steered and rejected 0), so the losses order candidates by
    how they were produced, whatever the reward model said (RLCD's pairs).

    `labels="tiers"`: the reward model orders the candidates within two tiers, and every negative-steered or
    rejected candidate (`LOWER_TIER`) ranks below every other candidate of its prompt: its reward is lowered by
    the group's reward span + 1, so the gaps inside each tier stay the reward model's own.

    `degenerate="last"`: a candidate flagged degenerate (empty, short, repetitive) joins its prompt's
    group with a reward 1 below the group's lowest, so the ranking loss pushes it under every other
    candidate (a reward model that was never shown such text may score it high). A prompt with
    nothing but degenerate candidates stays out. A row marked `ranked_last` (`mark_benign_refusals`) joins
    the bottom the same way, whatever its reward and `degenerate`.
    """
    if labels not in PAIR_LABELS:  # an unknown name must not fall through to the origin labels
        raise ValueError(f"labels must be one of {', '.join(PAIR_LABELS)}, got {labels!r}")
    groups: dict[str, PromptCandidates] = {}
    worst: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("ranked_last"):
            worst.setdefault(row["prompt_id"], []).append(row)
            continue
        if row.get("rank") is None:
            if degenerate == "last" and row.get("degenerate", False):
                worst.setdefault(row["prompt_id"], []).append(row)
            continue
        g = groups.setdefault(row["prompt_id"], PromptCandidates(row["prompt_id"], row["prompt"], [], [], []))
        g.responses.append(row["response"])
        g.rewards.append(_label(row, labels))
        g.origins.append(row["origin"])
    if labels == "tiers":
        for g in groups.values():
            _lower_tier_below(g)
    for prompt_id, extra in worst.items():
        g = groups.get(prompt_id)
        if g is None:
            continue
        floor = min(g.rewards) - 1.0
        for row in extra:
            g.responses.append(row["response"])
            g.rewards.append(floor)
            g.origins.append(row["origin"])
    return list(groups.values())


def mark_benign_refusals(rows: list[dict], answer_only: set[str], refusal_text: str = "") -> list[dict]:
    """`train.benign_refusals: last`: new rows where the candidates of the prompts in `answer_only` (the benign
    mix: requests the policy should answer) that the string-match judge calls refusals are marked `ranked_last`,
    plus, with `refusal_text`, that refusal as one more `rejected` candidate of each such prompt, also last.
    The reward model is not asked: trained on HH's evasive chosen answers, it ranks refusals first there too."""
    from neat.judges import StringMatchJudge

    picked = [i for i, r in enumerate(rows) if r["prompt_id"] in answer_only]
    refused = StringMatchJudge()([rows[i]["response"] for i in picked]) if picked else []
    flagged = {i for i, r in zip(picked, refused) if r}
    out = [dict(row, ranked_last=True) if i in flagged else row for i, row in enumerate(rows)]
    if refusal_text.strip():
        heads: dict[str, dict] = {}
        for i in picked:
            heads.setdefault(rows[i]["prompt_id"], rows[i])
        # only what `groups_from_scored` reads of a row ranked last; these rows are never written
        out += [dict(prompt_id=pid, prompt=head["prompt"], origin="rejected", response=refusal_text.strip(),
                     ranked_last=True) for pid, head in heads.items()]
    return out


def _lower_tier_below(group: PromptCandidates) -> None:
    offset = max(group.rewards) - min(group.rewards) + 1.0
    group.rewards = [r - offset if o in LOWER_TIER else r for r, o in zip(group.rewards, group.origins)]


def _label(row: dict, labels: str) -> float:
    if labels in ("reward", "tiers"):
        return float(row["reward"])
    if row["origin"] not in ORIGIN_LABELS:
        raise TrainingError(f"train.pair_labels: origin cannot label a candidate of origin '{row['origin']}' "
                            f"(prompt {row['prompt_id']}); known: {', '.join(ORIGIN_LABELS)}")
    return ORIGIN_LABELS[row["origin"]]



def round_order(n: int, seed: int, round_: int, epochs: int) -> list[int]:
    """The order the round visits its `n` prompts in: one seeded permutation per epoch, concatenated."""
    order: list[int] = []
    for epoch in range(epochs):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + round_ * 101 + epoch)
        order += torch.randperm(n, generator=gen).tolist()
    return order


def round_steps(n_groups: int, cfg) -> int:
    """Optimizer steps of one round of `n_groups` prompts under the `train` section `cfg`:
    `steps_per_round` when set, else `epochs_per_round` passes batched by `batch_size` and `grad_accum`."""
    if cfg.steps_per_round:
        return cfg.steps_per_round
    return math.ceil(math.ceil(n_groups * cfg.epochs_per_round / cfg.batch_size) / cfg.grad_accum)
