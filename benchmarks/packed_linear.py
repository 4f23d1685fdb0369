"""Packed vs plain Linear calls on CPU at the row counts generation runs (not a timed test).

    python benchmarks/packed_linear.py                # SmolLM2-135M's 210 block projections, bf16
    python benchmarks/packed_linear.py --dtype float32

Prints one JSON line: per row count, the milliseconds for one pass over the 30 blocks' seven projections
with `F.linear` (oneDNN reorders the weight in each call) and with weights packed once
(`neat.packed_linear`), their ratio, and whether the outputs are equal bit for bit. The rows where packing
stops paying off set `neat.packed_linear.PACKED_MAX_ROWS`. Each weight is its own tensor, so the pass reads
the 212 MB (bf16) from memory as a decode step does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SMOLLM2_BLOCK = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,8,14,32,64,128,256,512,1024,2048")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--blocks", type=int, default=30)
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from neat import packed_linear

    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    shapes = SMOLLM2_BLOCK * args.blocks
    weights = [torch.randn(o, i).mul(0.02).to(dtype) for o, i in shapes]
    packed = [packed_linear.pack_weight(w) for w in weights]

    def one_pass(x, ws, fn):
        return [fn(x[i], w) for w, (o, i) in zip(ws, shapes)]

    def timed(rows, ws, fn):
        x = {i: torch.randn(rows, i).to(dtype) for i in (576, 1536)}
        one_pass(x, ws, fn)
        reps = max(2, 1024 // rows)
        start = time.perf_counter()
        for _ in range(reps):
            one_pass(x, ws, fn)
        return (time.perf_counter() - start) / reps * 1000

    out = {"bench": "packed_linear", "dtype": args.dtype, "linears": len(shapes), "threads": torch.get_num_threads(),
           "cpus": os.cpu_count(), "packing_available": packed_linear.packing_available(dtype, 576, 576),
           "packed_max_rows": packed_linear.PACKED_MAX_ROWS, "rows": {}}
    with torch.no_grad():
        for rows in (int(r) for r in args.rows.split(",")):
            x = {i: torch.randn(rows, i).to(dtype) for i in (576, 1536)}
            equal = all(torch.equal(a, b) for a, b in zip(one_pass(x, weights, F.linear),
                                                          one_pass(x, packed, packed_linear.linear_on_packed)))
            plain, fast = [], []
            for _ in range(2):  # interleaved, against the machine's drift
                plain.append(timed(rows, weights, F.linear))
                fast.append(timed(rows, packed, packed_linear.linear_on_packed))
            out["rows"][rows] = {"plain_ms": round(min(plain), 2), "packed_ms": round(min(fast), 2),
                                 "speedup": round(min(plain) / min(fast), 2), "bit_identical": equal}
            print(rows, out["rows"][rows], file=sys.stderr, flush=True)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
