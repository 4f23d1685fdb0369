"""Evaluation's perplexity pass, float32 against bf16 autocast (not a timed test).

    python benchmarks/perplexity_pass.py                       # base and <out>/policy, params.yaml
    python benchmarks/perplexity_pass.py --params params_benchmark.yaml --policy outputs-benchmark/policy

Runs `neat.evaluate.response_nll` (rows batched by length) on the held-out chosen responses that
`neat evaluate` scores, for the base policy and the trained one, once in float32 and once under bf16
autocast (`evaluate.bf16_autocast`), interleaved in one process. Prints one JSON line: seconds and
perplexity per policy and mode, the trained/base ratio per mode, and the largest per-row relative NLL
difference between the modes. Needs `<out>/data` (`dvc repro prepare`) and a trained policy.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--policy", default=None, help="trained policy directory (default <out>/policy)")
    args = ap.parse_args()

    from neat.config import load_params
    from neat.evaluate import held_out_prompts, response_nll
    from neat.models import autocast_device, load_policy

    params = load_params(args.params)
    held = held_out_prompts(params)
    t = params.train
    out = {"bench": "perplexity_pass", "params": args.params, "rows": len(held)}
    nlls = {}
    for who, ref in (("base", params.policy.model), ("trained", args.policy or str(params.out("policy")))):
        model, tok = load_policy(ref, cache_dir=params.paths.cache, device="cpu", dtype="float32", seed=params.seed)
        amp = autocast_device(True, next(model.parameters()).device)
        for mode, autocast in (("float32", None), ("bf16", amp)):
            start = time.perf_counter()
            nll, tokens = response_nll(model, tok, [h["prompt"] for h in held], [h["chosen"] for h in held],
                                       batch_size=params.evaluate.batch_size, max_prompt_tokens=t.max_prompt_tokens,
                                       max_response_tokens=t.max_response_tokens, chunk=t.logprob_chunk,
                                       autocast=autocast)
            nlls[who, mode] = nll
            out[f"{who}_{mode}_seconds"] = round(time.perf_counter() - start, 1)
            out[f"{who}_{mode}_perplexity"] = round(math.exp(sum(nll) / sum(tokens)), 5)
        out[f"{who}_max_row_rel_diff"] = round(max(abs(a - b) / max(abs(a), 1e-9)
                                                   for a, b in zip(nlls[who, "float32"], nlls[who, "bf16"])), 5)
    for mode in ("float32", "bf16"):
        out[f"ratio_{mode}"] = round(out[f"trained_{mode}_perplexity"] / out[f"base_{mode}_perplexity"], 5)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
