"""Batched generation shared by expansion and evaluation.

Prompts are bucketed by length (sorted, then batched) and left-padded, so each batch wastes little
compute on padding and the KV cache serves every new token. Outputs come back in input order.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch


@dataclass
class Generation:
    text: str
    n_tokens: int
    finished: bool  # stopped at EOS rather than at max_new_tokens
    flags: list[str] = field(default_factory=list)  # "empty", "short", "repetitive", "truncated"

    @property
    def degenerate(self) -> bool:
        return any(f in ("empty", "short", "repetitive") for f in self.flags)


def batch_seed(seed: int, key: str) -> int:
    """A seed for one batch, stable across runs and independent of what ran before it."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:4], "big")


def quality_flags(token_ids: Sequence[int], text: str, finished: bool, min_tokens: int) -> list[str]:
    flags = []
    if not text.strip():
        flags.append("empty")
    elif len(token_ids) < min_tokens:
        flags.append("short")
    if len(token_ids) >= 16:
        # a response that cycles a few tokens ("no no no no …") carries no signal for ranking
        distinct = len(set(token_ids)) / len(token_ids)
        trigrams = [tuple(token_ids[i : i + 3]) for i in range(len(token_ids) - 2)]
        if distinct < 0.2 or len(set(trigrams)) / len(trigrams) < 0.3:
            flags.append("repetitive")
    if not finished:
        flags.append("truncated")
    return flags


def eos_ids(*sources) -> set[int]:
    """The stop token ids named by `eos_token_id`-like values (an int, a list of ints, or None)."""
    ids = set()
    for source in sources:
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(source)
    return ids


def _stop_ids(tokenizer, model) -> set[int]:
    return eos_ids(tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None))


def _vllm_engine(model) -> bool:
    """Whether `model` is a `neat.vllm_backend.VllmEngine` (without importing that module or vllm)."""
    backend = sys.modules.get("neat.vllm_backend")
    return backend is not None and isinstance(model, backend.VllmEngine)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    batch_size: int = 8,
    seed: int = 0,
    min_tokens: int = 1,
    on_batch: Callable[[int], None] | None = None,
) -> list[list[Generation]]:
    """Generate `num_return_sequences` responses per prompt (rendered prompt strings).

    temperature 0 means greedy decoding. `on_batch(n_prompts_done)` drives a progress bar.
    `model` may also be a `neat.vllm_backend.VllmEngine` (generation.backend: vllm): the call is
    then delegated to it, with the same contract (`batch_size` is left to vLLM's scheduler).
    """
    if _vllm_engine(model):
        return model.generate(tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                              top_p=top_p, num_return_sequences=num_return_sequences, seed=seed,
                              min_tokens=min_tokens, on_batch=on_batch)
    if not prompts:
        return []
    device = next(model.parameters()).device
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
    stop = _stop_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(stop), 0)
    results: list[list[Generation] | None] = [None] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids = encoded[i]
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                attention[row, width - len(ids) :] = 1
            torch.manual_seed(batch_seed(seed, prompts[idx[0]] + str(len(idx))))
            sample = temperature > 0
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=sample,
                temperature=temperature if sample else None,
                top_p=top_p if sample else None,
                top_k=None,
                num_return_sequences=num_return_sequences,
                pad_token_id=pad_id,
                eos_token_id=sorted(stop) or None,
            )
            new = out[:, width:].tolist()
            for row, i in enumerate(idx):
                gens = []
                for seq in new[row * num_return_sequences : (row + 1) * num_return_sequences]:
                    cut = next((k for k, t in enumerate(seq) if t in stop), None)
                    ids = seq if cut is None else seq[:cut]
                    text = tokenizer.decode(ids, skip_special_tokens=True).strip()
                    finished = cut is not None
                    gens.append(Generation(text, len(ids), finished, quality_flags(ids, text, finished, min_tokens)))
                results[i] = gens
            if on_batch:
                on_batch(len(idx))
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]
