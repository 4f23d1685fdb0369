"""Harmful requests in the training mix: the policy learns to refuse what it must refuse.

Left to itself SmolLM2-135M complies with nearly every blunt harmful request, and it does not refuse
even when a system prompt or in-context refusals ask it to (measured: 0-4 of 12), so neither its own
positive-steered samples nor HH's evasive chosen answers ("Sorry, I don't understand") give it a
refusal to learn. Harmful requests — each with a short written refusal that names what it will not
do and, where one exists, a safe alternative — join the training prompts. The refusal is the pair's
`chosen`; the base policy's own greedy answer is its `rejected` when it complied. The benign prompts
(`neat.benign`) hold the other side: requests that only sound harmful keep being answered.
"""

from __future__ import annotations

from pathlib import Path

from neat.data import PreferencePair, prompt_id_of
from neat.prompt_mix import greedy_answers, read_text_rows


def harmful_enabled(params) -> bool:
    return params.data.max_harmful_prompts > 0


def read_harmful_requests(path: str | Path) -> list[tuple[str, str]]:
    """(prompt, refusal) of a JSONL file of `{"prompt": "...", "refusal": "..."}` rows, in file order,
    repeated prompts dropped."""
    rows = read_text_rows(path, ("prompt", "refusal"), what="harmful requests", param="paths.harmful_requests")
    return [(row["prompt"], row["refusal"]) for row in rows]


def harmful_pairs(model, tokenizer, requests: list[tuple[str, str]], *, max_new_tokens: int, max_prompt_tokens: int,
                  batch_size: int, seed: int) -> tuple[list[PreferencePair], dict]:
    """One pair per request: its written refusal as `chosen`; the base policy's greedy, unsteered answer as
    `rejected` when that answer complied (not a refusal, not degenerate), else None.
    Returns (pairs, stats): how many requests, and how many the base policy complied with."""
    from neat.judges import StringMatchJudge

    messages, answers = greedy_answers(model, tokenizer, [p for p, _ in requests], max_new_tokens=max_new_tokens,
                                       max_prompt_tokens=max_prompt_tokens, batch_size=batch_size, seed=seed)
    refused = StringMatchJudge()([a.text for a in answers]) if answers else []
    complied = [not r and not a.degenerate for a, r in zip(answers, refused)]
    pairs = [PreferencePair(prompt_id_of(m), m, refusal, a.text if c else None)
             for m, (_, refusal), a, c in zip(messages, requests, answers, complied)]
    return pairs, {"harmful_prompts": len(requests), "harmful_base_complied": sum(complied)}
