"""Batched generation shared by expansion and evaluation.

Prompts are bucketed by length (sorted, then batched) and left-padded, so each batch wastes little
compute on padding and the KV cache serves every new token. Outputs come back in input order.
"""

from __future__ import annotations

import copy
import hashlib
import sys
import weakref
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from neat.diagnostics import is_repetitive
from neat.packed_linear import pack_linears


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
_default_batch_tokens = 0
_default_decode_tokens = 0
MIN_SHARED_PREFIX = 16  # shorter common starts are not worth an extra forward call


def use_engine(engine: str, batch_tokens: int | None = None, decode_tokens: int | None = None) -> None:
    """Set the engine `generate` uses on CPU when its caller names none, and the lean engine's batch
    token budgets for prefill and decode (stages call this with `params.generation.engine`, `.batch_tokens`
    and `.decode_tokens`)."""
    global _default_engine, _default_batch_tokens, _default_decode_tokens
    if engine not in ENGINES:
        raise ValueError(f"generation engine {engine!r}: expected one of {', '.join(ENGINES)}")
    _default_engine = engine
    if batch_tokens is not None:
        _default_batch_tokens = batch_tokens
    if decode_tokens is not None:
        _default_decode_tokens = decode_tokens


CPU_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_default_cpu_dtype = "float32"
_default_merge_lora = False


def use_generation_params(gen) -> None:
    """Set what `generate` uses when its caller names nothing, from params' `generation` section:
    the CPU engine, its token budgets, the CPU dtype and whether LoRA is merged (every stage calls this first)."""
    global _default_cpu_dtype, _default_merge_lora
    use_engine(gen.engine, gen.batch_tokens, gen.decode_tokens)
    _default_cpu_dtype = gen.cpu_dtype
    _default_merge_lora = gen.merge_lora


def resolve_cpu_dtype(model, cpu_dtype: str | None = None) -> torch.dtype:
    """The dtype a CPU generation runs in: auto = bfloat16 where the CPU has native bf16, else the model's."""
    from neat.models import native_bf16

    name = cpu_dtype or _default_cpu_dtype
    param = next(model.parameters())
    if param.device.type != "cpu":
        return param.dtype  # GPUs generate in policy.dtype
    if name == "auto":
        return torch.bfloat16 if native_bf16(param.device) else param.dtype
    return CPU_DTYPES[name]


_copies: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> (dtype, its generation copy)


def generation_copy(model, dtype: torch.dtype, merge_lora: bool = False):
    """`model` itself when it already has `dtype` (and, with `merge_lora`, no LoRA adapters), else a copy in
    `dtype` for generating (LoRA merged in float32 first, so the copy holds the rounded merged weights); the
    training model is left as it is. A float32 copy of a LoRA policy generates the same as the adapters up to
    float rounding, and faster on CPU: the adapters' skinny matmuls make a float32 prefill ~1.6x slower.

    The copy is kept for the model's lifetime and refreshed in place at the next call: a deepcopy + merge +
    cast of the peft-wrapped SmolLM2 takes 0.4-0.7 s per online round and probe, the refresh 0.1 s.
    Its Linear weights are packed for oneDNN (`neat.packed_linear`): the same outputs, faster linears.
    """
    if next(model.parameters()).dtype == dtype and not (merge_lora and hasattr(model, "merge_and_unload")):
        return model
    kept = _copies.get(model)
    if kept is not None and kept[0] == dtype and _refresh_copy(kept[1], model):
        pack_linears(kept[1])
        return kept[1]
    clone = _fresh_copy(model, dtype)
    pack_linears(clone)
    _copies[model] = (dtype, clone)
    return clone


def _fresh_copy(model, dtype: torch.dtype):
    clone = copy.deepcopy(model)
    if hasattr(clone, "merge_and_unload"):  # peft: one weight per layer decodes faster than base + adapter
        clone = clone.merge_and_unload()
    for param in clone.parameters():
        param.grad = None
    return clone.to(dtype).eval()


def _merged_sources(model) -> dict | None:
    """Parameter name of the merged copy -> a function giving its current float32 value from `model`,
    computed as peft's merge does (base weight, then each active adapter's delta added in turn); None
    where the model holds a layer this cannot merge (DoRA, non-Linear LoRA, modules_to_save, ...)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    sources, adapted = {}, []
    try:
        from peft.tuners.lora import Linear as LoraLinear
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # no peft installed: no adapters to merge
        LoraLinear = BaseTunerLayer = ()
    for name, module in base.named_modules():
        if BaseTunerLayer and isinstance(module, BaseTunerLayer):
            if (not isinstance(module, LoraLinear) or module.merged or any(module.use_dora.values())
                    or any(getattr(module, "lora_bias", {}).values())):
                return None
            adapted.append(name)

            def merged(layer=module):
                weight = layer.get_base_layer().weight.detach().clone()
                for adapter in layer.active_adapters:
                    if adapter in layer.lora_A:
                        weight += layer.get_delta_weight(adapter)
                return weight

            sources[f"{name}.weight"] = merged
            if module.get_base_layer().bias is not None:
                sources[f"{name}.bias"] = lambda layer=module: layer.get_base_layer().bias.detach()
    for name, param in base.named_parameters():
        if not any(name.startswith(f"{prefix}.") for prefix in adapted):
            sources[name] = lambda p=param: p.detach()
    return sources


@torch.no_grad()
def _refresh_copy(clone, model) -> bool:
    """Write `model`'s current merged weights into its kept copy; False if some weight of the copy has no
    source of its shape in `model` (the structure changed, or a layer cannot be merged here): the copy may
    then be half written, and the caller replaces it with a fresh one."""
    sources = _merged_sources(model)
    targets = dict(clone.named_parameters())
    if sources is None or not set(targets) <= set(sources):
        return False
    for name, target in targets.items():
        value = sources[name]()
        if value.shape != target.shape:
            return False
        target.copy_(value)
    return True


def resolve_engine(model, engine: str | None = None) -> str:
    """The engine a call runs: the lean loop only on CPU (other devices keep transformers' generate)."""
    engine = engine or _default_engine
    if engine not in ENGINES:
        raise ValueError(f"generation engine {engine!r}: expected one of {', '.join(ENGINES)}")
    return engine if next(model.parameters()).device.type == "cpu" else "hf"


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


def _growing_layer_class():
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A DynamicLayer that preallocates room for the new tokens and writes them in place.

        DynamicLayer concatenates the whole cache at every step (O(length) copying per token); this
        keeps one buffer per layer, `reserve` positions longer than what it holds, and hands
        attention a view of the filled part: the same key/value values, without the copies.
        """

        def __init__(self, reserve: int):
            super().__init__()
            self.reserve, self.n = reserve, 0
            self.buf_k = self.buf_v = None

        def _view(self):
            self.keys, self.values = self.buf_k[:, :, : self.n], self.buf_v[:, :, : self.n]
            return self.keys, self.values

        def update(self, key_states, value_states, *args, **kwargs):
            q = key_states.shape[-2]
            if self.buf_k is None or self.n + q > self.buf_k.shape[-2]:
                shape = (*key_states.shape[:2], self.n + q + self.reserve, key_states.shape[-1])
                k, v = key_states.new_empty(shape), value_states.new_empty(shape)
                if self.n:
                    k[:, :, : self.n], v[:, :, : self.n] = self.keys, self.values
                self.buf_k, self.buf_v = k, v
                self.device, self.is_initialized = key_states.device, True
            self.buf_k[:, :, self.n : self.n + q] = key_states
            self.buf_v[:, :, self.n : self.n + q] = value_states
            self.n += q
            return self._view()

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.n:
                self.buf_k = self.buf_k.repeat_interleave(repeats, dim=0)
                self.buf_v = self.buf_v.repeat_interleave(repeats, dim=0)
                self._view()

        def take(self, buf_k, buf_v, n: int) -> None:
            """Hold these buffers, of which the first `n` positions are filled (how `merge` joins batches)."""
            self.buf_k, self.buf_v, self.n = buf_k, buf_v, n
            self.device, self.is_initialized = buf_k.device, True
            self._view()

        def batch_select_indices(self, indices) -> None:
            if self.n:
                self.buf_k, self.buf_v = self.buf_k[indices], self.buf_v[indices]
                self._view()

    return GrowingLayer


def _kv_cache(model, reserve: int):
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    if all(type(layer).__name__ == "DynamicLayer" for layer in cache.layers):  # sliding/other layers keep theirs
        layer = _growing_layer_class()
        cache.layers = [layer(reserve) for _ in cache.layers]
    return cache


def lean_decode(model, input_ids, attention, *, max_new_tokens: int, k: int, stop: set[int],
                choose: Callable[[torch.Tensor, int], torch.Tensor], prune: bool = True,
                prefix: torch.Tensor | None = None) -> list[list[int]]:
    """Our own decode loop over the model's forward on one left-padded batch.

    The prompts are prefilled once; the KV cache, mask and last logits are then repeated `k` times,
    so the k samples of a prompt share one prefill (HF's generate prefills every copy). `prefix`
    (1-D token ids) is a start every prompt shares (e.g. the system turn): it is prefilled once for
    the whole batch and sits before the left-padded rest (`input_ids`), which the mask and position
    ids (= cumulative mask - 1, as HF's generate builds them) make equivalent to left-padding the
    whole prompt. Each step feeds only the newest token, so a row's logits are those of HF's path.
    With `prune`, rows that hit a stop id leave the batch (cache rows dropped) instead of decoding
    padding to the end. The KV cache is preallocated for the new tokens and written in place.
    `choose(logits, step)` maps the active rows' float32 next-token logits to their next tokens.
    Returns the new token ids per row (prompt-major, k per prompt), cut after the first stop id.
    """
    state = prefill(model, input_ids, attention, k=k, reserve=max_new_tokens, prefix=prefix)
    return decode(model, state, max_new_tokens=max_new_tokens, stop=stop, choose=choose, prune=prune)


@dataclass
class Prefilled:
    """A prefilled batch, ready to decode: its KV cache, attention mask over the cached positions, each row's
    last position id and next-token logits (float32)."""
    cache: object
    attention: torch.Tensor
    position: torch.Tensor
    logits: torch.Tensor


def prefill(model, input_ids, attention, *, k: int, reserve: int, prefix: torch.Tensor | None = None) -> Prefilled:
    """The prefill half of `lean_decode`: one forward over the prompts (and `prefix` before them), the
    result repeated `k` times per prompt; the cache keeps room for `reserve` new tokens."""
    cache = _kv_cache(model, reserve=reserve)
    if prefix is not None and len(prefix):
        model(input_ids=prefix[None], cache=cache, use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(input_ids.shape[0])
        attention = torch.cat([attention.new_ones((attention.shape[0], len(prefix))), attention], dim=-1)
    position = (attention.cumsum(-1) - 1).masked_fill(attention == 0, 0)[:, -input_ids.shape[1]:]
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
    return Prefilled(cache, attention, position, logits)


def mergeable(state: Prefilled) -> bool:
    """Whether `merge` can join this batch with others (every cache layer ours, see `_kv_cache`)."""
    return all(hasattr(layer, "take") for layer in state.cache.layers)


def merge(states: Sequence[Prefilled], reserve: int) -> Prefilled:
    """One batch of the rows of several prefilled ones, in order, to decode together: on a 2-core CPU a float32
    decode step of SmolLM2-135M costs ~10 ms a row at 14 rows and ~4 at 56-112, while one prefill of many long
    prompts runs slower than several small ones (its activations leave the cache). Shorter caches are left-padded
    with masked zero keys and values up to the longest; a row's own keys, values and positions are unchanged."""
    if len(states) == 1:
        return states[0]
    width = max(s.attention.shape[1] for s in states)
    attention = torch.cat([torch.nn.functional.pad(s.attention, (width - s.attention.shape[1], 0)) for s in states])
    cache = states[0].cache
    for i, layer in enumerate(cache.layers):
        parts = [s.cache.layers[i] for s in states]
        bufs = []
        for name in ("buf_k", "buf_v"):
            first = getattr(parts[0], name)
            buf = first.new_zeros((sum(getattr(p, name).shape[0] for p in parts), first.shape[1], width + reserve,
                                   first.shape[3]))
            row = 0
            for p in parts:
                rows = getattr(p, name).shape[0]
                buf[row : row + rows, :, width - p.n : width] = getattr(p, name)[:, :, : p.n]
                row += rows
            bufs.append(buf)
        layer.take(*bufs, width)
    return Prefilled(cache, attention, torch.cat([s.position for s in states]), torch.cat([s.logits for s in states]))


def decode(model, state: Prefilled, *, max_new_tokens: int, stop: set[int],
           choose: Callable[[torch.Tensor, int], torch.Tensor], prune: bool = True) -> list[list[int]]:
    """The decode half of `lean_decode`, from a prefilled (possibly merged) batch."""
    cache, attention, position, logits = state.cache, state.attention, state.position, state.logits
    n = logits.shape[0]
    tokens: list[list[int]] = [[] for _ in range(n)]
    rows = list(range(n))  # batch row -> output row
    alive = torch.ones(n, dtype=torch.bool)
    stop_t = torch.tensor(sorted(stop), dtype=torch.long) if stop else None
    width = attention.shape[1]
    attention = torch.cat([attention, attention.new_ones((n, max_new_tokens))], dim=-1)  # sliced per step
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
        position = position + 1
        out = model(input_ids=nxt[:, None], attention_mask=attention[:, : width + step + 1], position_ids=position,
                    cache=cache, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1].to(dtype=torch.float32, copy=True)
        del out
    return tokens


def shared_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Tokens every row starts with, leaving each row at least one token of its own."""
    n = min(len(r) for r in rows) - 1
    first = rows[0]
    for row in rows[1:]:
        n = min(n, next((i for i, (a, b) in enumerate(zip(first[:n], row[:n])) if a != b), n))
    return max(n, 0)


NUCLEUS_WIDTHS = (64, 1024)  # top-k widths searched for a row's top-p nucleus before sorting its vocabulary


def nucleus(logits: torch.Tensor, temperature: float, top_p: float):
    """The tokens HF's temperature and top-p warpers keep, and their sampling weights, as groups of rows:
    [(row indices, token ids [rows, n], weights [rows, n])]; the kept tokens come first, a weight is zero
    outside the nucleus, and the weights are not normalised.

    A token is kept when the probability of the tokens ranked above it is below `top_p` (HF removes
    the low tail whose cumulative probability is <= 1 - top_p; the top token always stays). HF sorts
    the whole vocabulary of every row at every step: 30 ms of a 16-row step on 2 cores, a third of a
    sampled expansion. Here each row's nucleus is looked for among its top 64 tokens, then its top
    1024 (SmolLM2 at temperature 0.9, top-p 0.95: 74 % and 99 % of rows), and only rows whose nucleus
    is wider still sort their vocabulary.
    """
    probs = torch.softmax(logits / temperature, dim=-1)
    todo, groups = torch.arange(len(probs)), []
    for width in (*NUCLEUS_WIDTHS, None):
        rows = probs[todo]
        if width is None or width >= rows.shape[-1]:
            top, ids = rows.sort(dim=-1, descending=True)
            covered = torch.ones(len(rows), dtype=torch.bool)
        else:
            top, ids = rows.topk(width, dim=-1)
            covered = top.sum(-1) >= top_p
        top, ids = top[covered], ids[covered]
        keep = (top.cumsum(-1) - top) < top_p
        keep[:, 0] = True
        groups.append((todo[covered], ids, top * keep))
        todo = todo[~covered]
        if not len(todo):
            break
    return groups


def _samplers(temperature: float, top_p: float) -> Callable[[torch.Tensor, int], torch.Tensor]:
    if temperature > 0 and top_p < 1.0:
        def choose(logits, step):
            # one uniform draw per row, mapped through the row's nucleus CDF: which group a row falls in
            # does not change the random numbers other rows get, and a sample moves only if its draw
            # lies within rounding of a CDF step (so two processes' last-bit differences rarely matter)
            u = torch.rand(len(logits), dtype=torch.float64)
            tokens = torch.empty(len(logits), dtype=torch.long)
            for rows, ids, weights in nucleus(logits, temperature, top_p):
                cdf = weights.double().cumsum(-1)
                pick = torch.searchsorted(cdf, (u[rows] * cdf[:, -1])[:, None], right=True)
                tokens[rows] = ids.gather(1, pick.clamp(max=ids.shape[1] - 1)).squeeze(1)
            return tokens
    elif temperature > 0:
        def choose(logits, step):
            return torch.multinomial(torch.softmax(logits / temperature, dim=-1), num_samples=1).squeeze(1)
    else:
        def choose(logits, step):
            return torch.argmax(logits, dim=-1)
    return choose


def _lean_prefill(model, rows, *, k: int, reserve: int, pad_id: int) -> Prefilled:
    shared = shared_prefix_length(rows) if len(rows) > 1 else 0
    if shared < MIN_SHARED_PREFIX:
        shared = 0
    device = next(model.parameters()).device
    input_ids, attention = _left_pad([r[shared:] for r in rows], pad_id)
    prefix = torch.tensor(rows[0][:shared], dtype=torch.long, device=device) if shared else None
    return prefill(model, input_ids.to(device), attention.to(device), k=k, reserve=reserve, prefix=prefix)


def _lean_group(model, chunks, *, max_new_tokens, temperature, top_p, k, pad_id, stop) -> list[list[int]]:
    """Prefill each chunk of prompt token ids on its own, then decode their rows together where the caches merge."""
    states = [_lean_prefill(model, rows, k=k, reserve=max_new_tokens, pad_id=pad_id) for rows in chunks]
    kw = dict(max_new_tokens=max_new_tokens, stop=stop, choose=_samplers(temperature, top_p))
    if all(mergeable(s) for s in states):
        return decode(model, merge(states, reserve=max_new_tokens), **kw)
    return [tokens for s in states for tokens in decode(model, s, **kw)]


def _groups(batches: list[list[int]], lengths: list[int], *, k: int, max_new_tokens: int,
            decode_tokens: int) -> list[list[list[int]]]:
    """Consecutive prefill batches decoded together while rows x (longest prompt + new tokens) of the group
    fits `decode_tokens` (0: each batch alone)."""
    out: list[list[list[int]]] = []
    for idx in batches:
        joined = [i for batch in out[-1] for i in batch] + idx if out else idx
        if out and _batch_cost(joined, lengths, k, max_new_tokens) <= decode_tokens:
            out[-1].append(idx)
        else:
            out.append([idx])
    return out


def _left_pad(rows, pad_id) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention[row, width - len(ids):] = 1
    return input_ids, attention


def _batch_cost(idx: Sequence[int], lengths: list[int], k: int, max_new_tokens: int) -> int:
    """The token budget prompts `idx` take decoded as one batch: rows x (longest prompt + new tokens)."""
    return len(idx) * k * (max(lengths[i] for i in idx) + max_new_tokens)


def _batches(order: list[int], lengths: list[int], *, batch_size: int, batch_tokens: int, k: int,
             max_new_tokens: int) -> list[list[int]]:
    """Consecutive runs of `order` (prompts sorted by length): `batch_size` prompts each, or, with a
    `batch_tokens` budget, as many as fit rows x (longest prompt + new tokens) <= budget (at least one)."""
    if not batch_tokens:
        return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    out: list[list[int]] = []
    for i in order:
        if out and _batch_cost(out[-1] + [i], lengths, k, max_new_tokens) <= batch_tokens:
            out[-1].append(i)
        else:
            out.append([i])
    return out


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
    batch_tokens: int | None = None,
    cpu_dtype: str | None = None,
    decode_tokens: int | None = None,
    merge_lora: bool | None = None,
) -> list[list[Generation]]:
    """Generate `num_return_sequences` responses per prompt (rendered prompt strings).

    temperature 0 means greedy decoding. `on_batch(n_prompts_done)` drives a progress bar.
    `engine` (default: the one set by `use_engine`, i.e. params' generation.engine) picks, on CPU,
    our lean decode loop (`lean_decode`: one prefill shared by a prompt's samples, and by the batch
    for the start all its prompts share) or transformers' `generate` (hf); both give the same greedy
    outputs and the same sampling distribution, but not the same samples for a seed. The lean engine
    prefills by `batch_tokens` (default: params' generation.batch_tokens; 0 = `batch_size` prompts) and decodes
    consecutive prefills together while rows x (longest prompt + new tokens) fits `decode_tokens` (default:
    params' generation.decode_tokens; 0 = each prefill alone); the samples drawn for a seed depend on both,
    their distribution and greedy outputs do not. On CPU,
    `cpu_dtype` (default: params' generation.cpu_dtype; float32 when no stage set it) may make it generate
    with a bfloat16 copy of `model` (`generation_copy`), and `merge_lora` (default: params' generation.merge_lora;
    off when no stage set it) with a copy whose LoRA adapters are merged into its weights. `model` may also be a
    `neat.vllm_backend.VllmEngine` (generation.backend: vllm): the call is then delegated to it, with the same contract
    (`batch_size` is left to vLLM's scheduler).
    """
    if _vllm_engine(model):
        return model.generate(tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                              top_p=top_p, num_return_sequences=num_return_sequences, seed=seed,
                              min_tokens=min_tokens, on_batch=on_batch)
    if not prompts:
        return []
    device = next(model.parameters()).device
    lean = resolve_engine(model, engine) == "lean"
    merge = (_default_merge_lora if merge_lora is None else merge_lora) and device.type == "cpu"
    model = generation_copy(model, resolve_cpu_dtype(model, cpu_dtype), merge_lora=merge)
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
    stop = _stop_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(stop), 0)
    lengths = [len(e) for e in encoded]
    budget = (_default_batch_tokens if batch_tokens is None else batch_tokens) if lean else 0
    decode_budget = (_default_decode_tokens if decode_tokens is None else decode_tokens) if lean else 0
    batches = _batches(order, lengths, batch_size=batch_size, batch_tokens=budget, k=num_return_sequences,
                       max_new_tokens=max_new_tokens)
    results: list[list[Generation] | None] = [None] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for group in _groups(batches, lengths, k=num_return_sequences, max_new_tokens=max_new_tokens,
                             decode_tokens=decode_budget):
            idx = [i for batch in group for i in batch]
            torch.manual_seed(batch_seed(seed, prompts[idx[0]] + str(len(idx))))
            kw = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, k=num_return_sequences,
                      pad_id=pad_id, stop=stop)
            if lean:
                new = _lean_group(model, [[encoded[i] for i in batch] for batch in group], **kw)
            else:
                input_ids, attention = _left_pad([encoded[i] for i in idx], pad_id)
                new = _hf_batch(model, input_ids.to(device), attention.to(device), **kw)
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
