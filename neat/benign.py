"""Benign prompts in the training mix: the policy keeps answering what it should answer.

HH-RLHF's harmless slice holds red-team dialogues only, and its chosen responses are mostly evasive.
Imitating them teaches the policy to refuse whatever sounds risky, safe requests included (XSTest's
safe prompts; docs/experiments.md). Benign prompts — everyday requests, many worded with words that
sound harmful ("kill the weeds") — join the training prompts. Their `chosen` response is the base
policy's own greedy, unsteered answer, kept only when it is not a refusal; they have no rejected one.
The SFT term then holds the policy to answering them, and their steered samples are ranked by the
reward model like any prompt's.
"""

from __future__ import annotations

from pathlib import Path

from neat.data import PreferencePair, prompt_id_of
from neat.prompt_mix import greedy_answers, read_text_rows


def benign_enabled(params) -> bool:
    return params.data.max_benign_prompts > 0


def read_benign_prompts(path: str | Path) -> list[str]:
    """The prompts of a JSONL file of `{"prompt": "..."}` rows, in file order, duplicates dropped."""
    rows = read_text_rows(path, ("prompt",), what="benign prompts", param="paths.benign_prompts")
    return [row["prompt"] for row in rows]


def benign_pairs(model, tokenizer, prompts: list[str], *, max_new_tokens: int, max_prompt_tokens: int,
                 batch_size: int, seed: int) -> tuple[list[PreferencePair], dict]:
    """One pair per prompt whose greedy, unsteered answer is neither a refusal nor degenerate.

    The answer is the pair's `chosen`; `rejected` is None (there is no human-labelled worse answer).
    Returns (pairs, stats): how many prompts were answered, kept, refused, degenerate.
    """
    from neat.judges import StringMatchJudge

    messages, answers = greedy_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                       max_prompt_tokens=max_prompt_tokens, batch_size=batch_size, seed=seed)
    refused = StringMatchJudge()([a.text for a in answers]) if answers else []
    pairs = [PreferencePair(prompt_id_of(m), m, a.text, None)
             for m, a, r in zip(messages, answers, refused) if not r and not a.degenerate]
    stats = {"benign_prompts": len(prompts), "benign_kept": len(pairs), "benign_refused": sum(refused),
             "benign_degenerate": sum(a.degenerate and not r for a, r in zip(answers, refused))}
    return pairs, stats
