"""Attention on CPU in bf16 at the lean decode loop's shapes: SDPA (flash, GQA) against matmul attention.

SmolLM2-135M's attention (9 query heads, 3 KV heads, head dim 64) for decode steps (one query over 300 keys, 14
or 28 rows) and prefills (16 x 315, and 24 x 300 queries over 340 keys), half the rows left-padded, as the loop
masks them. Timed: `scaled_dot_product_attention` with `enable_gqa` (what transformers runs), the same with the KV
heads repeated, transformers' eager attention (repeat_kv, matmul, float32 softmax, matmul), and a matmul that
groups the query heads per KV head instead of repeating keys. One JSON line per shape: milliseconds per call and
each matmul variant's largest difference from SDPA. Not a timed test.

    .venv/bin/python benchmarks/attention_kernels.py
"""

from __future__ import annotations

import json
import time

import torch
import torch.nn.functional as F

HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64
GROUP = HEADS // KV_HEADS
SHAPES = ((14, 1, 300), (28, 1, 300), (16, 315, 315), (24, 300, 340))  # rows, queries, keys


def ms_per_call(fn, calls: int) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1000


def variants(q, k, v, mask):
    rows, _, queries, _ = q.shape
    keys = k.shape[2]
    scale = HEAD_DIM ** -0.5
    additive = torch.zeros(mask.shape, dtype=q.dtype).masked_fill(~mask, torch.finfo(q.dtype).min)

    def sdpa_gqa():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)

    def sdpa_repeated():
        return F.scaled_dot_product_attention(q, k.repeat_interleave(GROUP, 1), v.repeat_interleave(GROUP, 1),
                                              attn_mask=mask, scale=scale)

    def eager():
        weights = torch.matmul(q, k.repeat_interleave(GROUP, 1).transpose(2, 3)) * scale + additive
        weights = torch.softmax(weights, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(weights, v.repeat_interleave(GROUP, 1))

    def grouped_matmul():
        grouped = q.reshape(rows, KV_HEADS, GROUP * queries, HEAD_DIM)
        weights = torch.matmul(grouped, k.transpose(2, 3)).view(rows, KV_HEADS, GROUP, queries, keys) * scale
        weights = torch.softmax(weights + additive[:, :, None], dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(weights.view(rows, KV_HEADS, GROUP * queries, keys), v).view(rows, HEADS, queries, HEAD_DIM)

    return {"sdpa_gqa": sdpa_gqa, "sdpa_repeated_kv": sdpa_repeated, "eager": eager, "grouped_matmul": grouped_matmul}


def main() -> None:
    torch.manual_seed(0)
    for rows, queries, keys in SHAPES:
        q = torch.randn(rows, HEADS, queries, HEAD_DIM, dtype=torch.bfloat16)
        k = torch.randn(rows, KV_HEADS, keys, HEAD_DIM, dtype=torch.bfloat16)
        v = torch.randn(rows, KV_HEADS, keys, HEAD_DIM, dtype=torch.bfloat16)
        padded = torch.ones(rows, keys, dtype=torch.bool)
        padded[: rows // 2, :20] = False
        mask = torch.ones(queries, keys, dtype=torch.bool).tril(keys - queries)[None, None] & padded[:, None, None]
        if queries == keys:  # a padding query would see no key at all: it keeps its own, so softmax stays finite
            mask = mask | torch.eye(queries, dtype=torch.bool)[None, None]
        fns = variants(q, k, v, mask)
        reference = fns["sdpa_gqa"]().float()
        calls = 30 if queries == 1 else 5
        print(json.dumps({
            "rows": rows, "queries": queries, "keys": keys,
            "ms_per_call": {name: round(ms_per_call(fn, calls), 3) for name, fn in fns.items()},
            "max_abs_diff_from_sdpa": {name: float((fns[name]().float() - reference).abs().max())
                                       for name in ("eager", "grouped_matmul")},
        }), flush=True)


if __name__ == "__main__":
    main()
