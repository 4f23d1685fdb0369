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

from neat.diagnostics import is_repetitive


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
        if distinct < 0.2 or len(set(trigrams)) / len(trigrams) < 0.3 or is_repetitive(text):
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


ENGINES = ("lean", "hf")
_default_engine = "lean"


def use_engine(engine: str) -> None:
    """Set the engine `generate` uses on CPU when its caller names none (stages call this with
    `params.generation.engine`)."""
    global _default_engine
    if engine not in ENGINES:
        raise ValueError(f"generation engine {engine!r}: expected one of {', '.join(ENGINES)}")
    _default_engine = engine


def resolve_engine(model, engine: str | None = None) -> str:
    """The engine a call runs: the lean loop only on CPU (other devices keep transformers' generate)."""
    engine = engine or _default_engine
    if engine not in ENGINES:
        raise ValueError(f"generation engine {engine!r}: expected one of {', '.join(ENGINES)}")
    return engine if next(model.parameters()).device.type == "cpu" else "hf"


def warpers(temperature: float, top_p: float) -> list:
    """The logits warpers HF's `generate` builds for do_sample with this temperature and top_p (top_k off)."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    out = []
    if temperature != 1.0:
        out.append(TemperatureLogitsWarper(temperature))
    if top_p < 1.0:
        out.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
    return out


def _hf_batch(model, input_ids, attention, *, max_new_tokens, temperature, top_p, k, pad_id, stop) -> list[list[int]]:
    """transformers' `generate` on one left-padded batch: new token ids per row (prompt-major, k per prompt)."""
    sample = temperature > 0
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention,
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        temperature=temperature if sample else None,
        top_p=top_p if sample else None,
        top_k=None,
        num_return_sequences=k,
        pad_token_id=pad_id,
        eos_token_id=sorted(stop) or None,
    )
    return out[:, input_ids.shape[1]:].tolist()


def lean_decode(model, input_ids, attention, *, max_new_tokens: int, k: int, stop: set[int],
                choose: Callable[[torch.Tensor, int], torch.Tensor], prune: bool = True) -> list[list[int]]:
    """Our own decode loop over the model's forward on one left-padded batch.

    The prompts are prefilled once; the KV cache, mask and last logits are then repeated `k` times,
    so the k samples of a prompt share one prefill (HF's generate prefills every copy). Each step
    feeds only the newest token with the same mask and position ids HF's generate builds (positions
    = cumulative mask − 1), so a row's logits are those of HF's path. With `prune`, rows that hit a
    stop id leave the batch (cache rows dropped) instead of decoding padding to the end.
    `choose(logits, step)` maps the active rows' float32 next-token logits to their next tokens.
    Returns the new token ids per row (prompt-major, k per prompt), cut after the first stop id.
    """
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    position = (attention.cumsum(-1) - 1).masked_fill(attention == 0, 0)
    out = model(input_ids=input_ids, attention_mask=attention, position_ids=position, cache=cache,
                use_cache=True, logits_to_keep=1)
    logits = out.logits[:, -1].to(dtype=torch.float32, copy=True)
    del out
    position = position[:, -1:]
    if k > 1:
        cache.batch_repeat_interleave(k)
        attention = attention.repeat_interleave(k, dim=0)
        position = position.repeat_interleave(k, dim=0)
        logits = logits.repeat_interleave(k, dim=0)
    n = logits.shape[0]
    tokens: list[list[int]] = [[] for _ in range(n)]
    rows = list(range(n))  # batch row -> output row
    alive = torch.ones(n, dtype=torch.bool)
    stop_t = torch.tensor(sorted(stop), dtype=torch.long) if stop else None
    for step in range(max_new_tokens):
        nxt = choose(logits, step)
        for row, t in zip(rows, nxt.tolist()):
            if alive[row]:
                tokens[row].append(t)
        done = torch.isin(nxt, stop_t) if stop_t is not None else torch.zeros_like(nxt, dtype=torch.bool)
        if step == max_new_tokens - 1:
            break
        if prune:
            if bool(done.all()):
                break
            if bool(done.any()):
                keep = (~done).nonzero().flatten()
                cache.batch_select_indices(keep)
                attention, position, nxt = attention[keep], position[keep], nxt[keep]
                rows = [rows[i] for i in keep.tolist()]
        else:
            for row, d in zip(rows, done.tolist()):
                if d:
                    alive[row] = False
            if not bool(alive.any()):
                break
        attention = torch.cat([attention, attention.new_ones((attention.shape[0], 1))], dim=-1)
        position = position + 1
        out = model(input_ids=nxt[:, None], attention_mask=attention, position_ids=position, cache=cache,
                    use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1].to(dtype=torch.float32, copy=True)
        del out
    return tokens


def _lean_batch(model, input_ids, attention, *, max_new_tokens, temperature, top_p, k, pad_id, stop) -> list[list[int]]:
    if temperature > 0:
        procs = warpers(temperature, top_p)

        def choose(logits, step):
            for proc in procs:
                logits = proc(None, logits)
            return torch.multinomial(torch.nn.functional.softmax(logits, dim=-1), num_samples=1).squeeze(1)
    else:
        def choose(logits, step):
            return torch.argmax(logits, dim=-1)
    return lean_decode(model, input_ids, attention, max_new_tokens=max_new_tokens, k=k, stop=stop, choose=choose)


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
    engine: str | None = None,
) -> list[list[Generation]]:
    """Generate `num_return_sequences` responses per prompt (rendered prompt strings).

    temperature 0 means greedy decoding. `on_batch(n_prompts_done)` drives a progress bar.
    `engine` (default: the one set by `use_engine`, i.e. params' generation.engine) picks, on CPU,
    our lean decode loop (`lean_decode`: one prefill shared by a prompt's samples) or transformers'
    `generate` (hf); both give the same greedy outputs and the same sampling distribution, but not
    the same samples for a seed. `model` may also be a `neat.vllm_backend.VllmEngine`
    (generation.backend: vllm): the call is then delegated to it, with the same contract
    (`batch_size` is left to vLLM's scheduler).
    """
    if _vllm_engine(model):
        return model.generate(tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                              top_p=top_p, num_return_sequences=num_return_sequences, seed=seed,
                              min_tokens=min_tokens, on_batch=on_batch)
    if not prompts:
        return []
    device = next(model.parameters()).device
    run_batch = _lean_batch if resolve_engine(model, engine) == "lean" else _hf_batch
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
            new = run_batch(model, input_ids.to(device), attention.to(device), max_new_tokens=max_new_tokens,
                            temperature=temperature, top_p=top_p, k=num_return_sequences, pad_id=pad_id, stop=stop)
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
