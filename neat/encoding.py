"""A prompt and its candidate responses, from messages to the tensors a model runs over.

Used alike by training (`neat.training`), evaluation (`neat.evaluate`) and the benchmarks, so none of
them imports the trainer to tokenise:

- `render_prompt`: the prompt text the policy sees (chat template, else plain turns);
- `fit_turns` / `encode_prompt` / `encode_response`: fitted to a token budget and tokenised;
- `PromptCandidates`: one prompt with its candidate responses, their rewards and origins;
- `collate` (one sequence per candidate, `Batch`) and `collate_packed` (the prompt once per row,
  `PackedBatch`, see `neat.packing`): a list of them as one batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def render_prompt(tokenizer, messages: list[dict], system: str | None = None) -> str:
    """The prompt text the policy sees: chat template when the tokenizer has one, else plain turns."""
    if system:
        messages = [{"role": "system", "content": system}] + [m for m in messages if m["role"] != "system"]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    names = {"system": "System", "user": "Human", "assistant": "Assistant"}
    body = "".join(f"\n\n{names[m['role']]}: {m['content']}" for m in messages)
    return body + "\n\nAssistant:"


def token_lengths(tokenizer, pairs) -> dict:
    """p50/p90/p99/max token counts of the rendered prompts and of the chosen and rejected responses."""
    from neat.data import percentiles

    def n_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return {"prompt_tokens": percentiles([n_tokens(render_prompt(tokenizer, p.prompt)) for p in pairs]),
            "chosen_tokens": percentiles([n_tokens(p.chosen) for p in pairs]),
            "rejected_tokens": percentiles([n_tokens(p.rejected) for p in pairs])}


def fit_turns(tokenizer, messages: list[dict], max_tokens: int) -> tuple[str, list[int]]:
    """The prompt rendered without steering, with its ids; to fit `max_tokens` the earliest user/assistant
    exchanges are dropped (a leading system turn is kept), then the ids are cut from the left."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    rest = list(messages[len(system):])
    while True:
        text = render_prompt(tokenizer, system + rest)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= max_tokens or len(rest) <= 1:
            return text, ids[-max_tokens:]
        rest = rest[2:]


def encode_prompt(tokenizer, messages: list[dict], max_tokens: int) -> list[int]:
    """Prompt ids without any steering, fitted to `max_tokens` (see `fit_turns`)."""
    return fit_turns(tokenizer, messages, max_tokens)[1]


def encode_response(tokenizer, text: str, max_tokens: int) -> list[int]:
    """Response ids followed by EOS (EOS is scored); cut at `max_tokens` (then without EOS)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    ids = ids + ([eos] if eos is not None else [])
    return ids[:max_tokens]


# where a candidate response came from; `probe`: the policy's own unsteered greedy answer, kept only when
# degenerate (train.loop_probes), ranked last
ORIGINS = ("chosen", "rejected", "positive", "negative", "probe")


@dataclass
class PromptCandidates:
    """One prompt and its candidate responses, with their rewards (higher is better) and origins."""

    prompt_id: str
    prompt: list[dict]
    responses: list[str]
    rewards: list[float]
    origins: list[str]


@dataclass
class Batch:
    input_ids: torch.Tensor  # [N, T]
    attention_mask: torch.Tensor  # [N, T]
    response_mask: torch.Tensor  # [N, T]
    slot: torch.Tensor  # [N, 2] (prompt b, candidate k) of each sequence
    rewards: torch.Tensor  # [B, K]
    mask: torch.Tensor  # [B, K]
    origins: list[list[str]]


def collate(tokenizer, groups: list[PromptCandidates], max_prompt_tokens: int, max_response_tokens: int,
            pad_id: int) -> Batch:
    """One right-padded sequence (prompt + candidate + EOS) per candidate; the first token is never scored."""
    seqs, resp_starts, slots = [], [], []
    k_max = max(len(g.responses) for g in groups)
    rewards = torch.zeros(len(groups), k_max)
    mask = torch.zeros(len(groups), k_max, dtype=torch.bool)
    for b, group in enumerate(groups):
        prompt_ids = encode_prompt(tokenizer, group.prompt, max_prompt_tokens)
        for k, (text, reward) in enumerate(zip(group.responses, group.rewards)):
            seqs.append(prompt_ids + encode_response(tokenizer, text, max_response_tokens))
            resp_starts.append(len(prompt_ids))
            slots.append((b, k))
            rewards[b, k] = reward
            mask[b, k] = True
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    response = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (seq, start) in enumerate(zip(seqs, resp_starts)):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention[i, : len(seq)] = 1
        response[i, max(start, 1) : len(seq)] = True
    return Batch(input_ids, attention, response, torch.tensor(slots), rewards, mask, [g.origins for g in groups])


@dataclass
class PackedBatch:
    """Shared-prompt layout (see `neat.packing`): one row per prompt, the prompt once, then each candidate."""

    input_ids: torch.Tensor  # [B, T]
    position_ids: torch.Tensor  # [B, T]
    segment_ids: torch.Tensor  # [B, T]: 0 prompt, k + 1 candidate k, -1 padding
    response_mask: torch.Tensor  # [B, T]
    sequence_index: torch.Tensor  # [B, T]: row of `slot` each response token belongs to
    slot: torch.Tensor  # [N, 2] (prompt b, candidate k) of each candidate
    rewards: torch.Tensor  # [B, K]
    mask: torch.Tensor  # [B, K]
    origins: list[list[str]]
    n_tokens: int  # real tokens the model runs over


def _encode_groups(tokenizer, groups, max_prompt_tokens, max_response_tokens):
    k_max = max(len(g.responses) for g in groups)
    rewards = torch.zeros(len(groups), k_max)
    mask = torch.zeros(len(groups), k_max, dtype=torch.bool)
    prompts, responses, slots = [], [], []
    for b, group in enumerate(groups):
        prompts.append(encode_prompt(tokenizer, group.prompt, max_prompt_tokens))
        responses.append([encode_response(tokenizer, text, max_response_tokens) for text in group.responses])
        for k, reward in enumerate(group.rewards):
            slots.append((b, k))
            rewards[b, k] = reward
            mask[b, k] = True
    return prompts, responses, slots, rewards, mask


def collate_packed(tokenizer, groups: list[PromptCandidates], max_prompt_tokens: int, max_response_tokens: int,
                   pad_id: int) -> PackedBatch:
    """Like `collate`, but each prompt is computed once for all its candidates (same log-probs)."""
    from neat.packing import pack_rows

    prompts, responses, slots, rewards, mask = _encode_groups(tokenizer, groups, max_prompt_tokens, max_response_tokens)
    rows = pack_rows(prompts, responses, pad_id)
    return PackedBatch(rows.input_ids, rows.position_ids, rows.segment_ids, rows.response_mask, rows.sequence_index,
                       torch.tensor(slots), rewards, mask, [g.origins for g in groups], rows.n_tokens)


def batch_tokens(batch) -> int:
    """Real tokens the model runs over in a `Batch` or `PackedBatch`."""
    return batch.n_tokens if isinstance(batch, PackedBatch) else int(batch.attention_mask.sum())
