"""Shared-prompt packing: one sequence per prompt holding the prompt once and all its candidates.

A prompt with K candidates is usually fed to the model as K sequences ``prompt + response_k``, so
the prompt is computed K times. Here it is computed once. The packed row of prompt b is::

    prompt[:-1] | prompt[-1] response_1 | prompt[-1] response_2 | ... | prompt[-1] response_K | pad

* the shared part ``prompt[:-1]`` has positions 0 .. P-2 and plain causal attention;
* candidate segment k repeats the last prompt token, then its response, with positions P-1, P, ...
  (the same positions as in the unshared sequence ``prompt + response_k``), and attends causally to
  the shared part and to its own earlier tokens only, never to another candidate;
* padding attends to itself only (so no row of the mask is empty: no NaN under any kernel).

Every token thus sees exactly the context and position it has in the unshared sequence, so the
hidden states, log-probs and gradients are the same up to float rounding. The last prompt token is
repeated (one extra token per candidate) so that, inside each segment, position t still predicts
token t + 1, and ``neat.logprobs.response_logprobs`` sends only response positions through the LM
head, in chunks, exactly as for unshared sequences. A prompt of P tokens and K responses of R tokens
costs ``P - 1 + K (R + 1)`` tokens instead of ``K (P + R)``.

The 4D mask is built in the form the model's attention implementation takes in transformers 5.x
(``masking_utils._preprocess_mask_arguments`` passes any 4D mask through untouched): bool
``[N, 1, T, T]`` (True = may attend) for ``sdpa`` and other kernels that take one, an additive float
mask (0 / dtype min) for ``eager``, which adds the mask to the attention scores. Flash-attention
kernels take no dense mask: ``supports_packing`` is False for them and callers fall back to the
unshared layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["PackedRows", "pack_rows", "block_mask", "supports_packing", "model_mask"]


@dataclass
class PackedRows:
    input_ids: Tensor  # [N, T] long
    position_ids: Tensor  # [N, T] long
    segment_ids: Tensor  # [N, T] long: 0 shared prompt, k + 1 candidate k of that row, -1 padding
    response_mask: Tensor  # [N, T] bool: scored response tokens
    sequence_index: Tensor  # [N, T] long: flat candidate index of each response token (-1 elsewhere)
    n_sequences: int
    n_tokens: int  # real (non-padding) tokens


def pack_rows(prompts: list[list[int]], responses: list[list[list[int]]], pad_id: int) -> PackedRows:
    """Pack prompt b with its candidates ``responses[b]`` into row b.

    Candidates are numbered flat in row order (row 0's candidates first), matching ``sequence_index``.
    A response token is scored exactly where it is in ``prompt + response`` unshared with the
    scoring rule used by ``neat.encoding.collate``: every response token, except a first token at
    sequence position 0 (empty prompt), which has nothing to be predicted from.
    """
    rows = []
    flat = 0
    for prompt, cands in zip(prompts, responses):
        shared = list(prompt[:-1])
        ids, pos, seg, scored, seq = list(shared), list(range(len(shared))), [0] * len(shared), [False] * len(shared), [-1] * len(shared)
        for k, resp in enumerate(cands):
            # the segment is the unshared sequence from position len(shared) on; it starts with the
            # last prompt token (or, for an empty prompt, with the first response token)
            segment = list(prompt[-1:]) + list(resp)
            start = len(shared)
            ids += segment
            pos += list(range(start, start + len(segment)))
            seg += [k + 1] * len(segment)
            scored += [False] + [True] * (len(segment) - 1)
            seq += [-1] + [flat] * (len(segment) - 1)
            flat += 1
        rows.append((ids, pos, seg, scored, seq))
    width = max(1, max(len(r[0]) for r in rows))
    n = len(rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n, width), dtype=torch.long)
    segment_ids = torch.full((n, width), -1, dtype=torch.long)
    response_mask = torch.zeros((n, width), dtype=torch.bool)
    sequence_index = torch.full((n, width), -1, dtype=torch.long)
    real = 0
    for i, (ids, pos, seg, scored, seq) in enumerate(rows):
        m = len(ids)
        real += m
        input_ids[i, :m] = torch.tensor(ids, dtype=torch.long)
        position_ids[i, :m] = torch.tensor(pos, dtype=torch.long)
        position_ids[i, m:] = 1
        segment_ids[i, :m] = torch.tensor(seg, dtype=torch.long)
        response_mask[i, :m] = torch.tensor(scored, dtype=torch.bool)
        sequence_index[i, :m] = torch.tensor(seq, dtype=torch.long)
    return PackedRows(input_ids, position_ids, segment_ids, response_mask, sequence_index, flat, real)


def block_mask(segment_ids: Tensor) -> Tensor:
    """Bool ``[N, 1, T, T]``: query i may attend key j iff j <= i and j is in the shared prompt or in
    i's own segment; padding (segment -1) attends to itself only."""
    t = segment_ids.shape[1]
    q, k = segment_ids[:, :, None], segment_ids[:, None, :]
    causal = torch.ones(t, t, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = causal & (q >= 0) & ((k == 0) | (k == q))
    allowed |= torch.eye(t, dtype=torch.bool, device=segment_ids.device)
    return allowed[:, None]


def _attn_implementation(model) -> str:
    config = getattr(model, "config", None)
    if config is None and hasattr(model, "module"):
        config = getattr(model.module, "config", None)
    return str(getattr(config, "_attn_implementation", None) or "eager")


def supports_packing(model) -> bool:
    """Whether the model's attention takes a dense custom 4D mask (eager, sdpa, flex: yes; flash: no)."""
    return "flash" not in _attn_implementation(model)


def model_mask(model, allowed: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``allowed`` (bool ``[N, 1, T, T]``) in the form ``model``'s attention implementation takes."""
    if _attn_implementation(model) == "eager":
        dtype = dtype or next(model.parameters()).dtype
        zero = torch.zeros((), dtype=dtype, device=allowed.device)
        return torch.where(allowed, zero, torch.finfo(dtype).min)
    return allowed
