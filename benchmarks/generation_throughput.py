"""Generation throughput on CPU: transformers' generate (hf) vs our lean decode loop (not a timed test).

    python benchmarks/generation_throughput.py                      # SmolLM2-135M, expansion-shaped workload
    python benchmarks/generation_throughput.py --model builtin:tiny-random --prompts 8 --rounds 1

Prints one JSON line. Workload: the pipeline's own expansion prompts (positive steering prompt +
in-context demos from params.yaml's expand section, rendered with the chat template) for the first
`--prompts` prompts of the HH slice (or the demo data), at the pipeline's sizes: expand.batch_size
prompts per batch, expand.k_pos samples per prompt (temperature/top_p from params.yaml), and the
greedy single-sample pass evaluation and the online probe use.

The machine is shared with other jobs, so the two engines are timed interleaved in one process
(alternating which goes first each round) and the JSON reports per-round paired ratios and their
median next to the absolute numbers, plus the load average before and after. The compute bound is
the measured fp32 matmul rate (1024² GEMM, same threads) ÷ 2 × parameters FLOPs per generated token;
`fraction_of_bound` = tokens/s × FLOPs per token ÷ matmul rate (prefill FLOPs are not credited).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HH_SLICE = ROOT.parent / "shared/data/hh-rlhf/harmless-base-test.first1000.jsonl.gz"
DEMO = ROOT / "data/demo/hh_demo.jsonl"


def matmul_flops(seconds: float = 2.0) -> float:
    import torch

    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def expansion_prompts(tokenizer, cfg, n: int, data: Path) -> list[str]:
    from neat.data import read_preferences
    from neat.expand import pick_demos, select_prompts, steered_prompt

    pairs = read_preferences(data).pairs
    groups = select_prompts(pairs, n)
    texts = []
    for group in groups:
        head = group[0]
        demos = pick_demos(pairs, head.prompt_id, cfg.n_demos, 0, "chosen")
        text = steered_prompt(tokenizer, head.prompt, cfg.positive_prompt, demos, cfg.max_prompt_tokens)
        if text is not None:
            texts.append(text)
    return texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", default=None)
    args = ap.parse_args()

    import torch

    from neat.config import load_params
    from neat.generation import generate
    from neat.models import load_policy

    params = load_params(ROOT / "params.yaml")
    cfg = params.expand
    model, tokenizer = load_policy(args.model, cache_dir=os.environ.get("NEAT_CACHE_DIR", str(ROOT / ".cache/neat")),
                                   device="cpu", dtype="float32", seed=0)
    data = Path(args.data) if args.data else (HH_SLICE if HH_SLICE.exists() else DEMO)
    prompts = expansion_prompts(tokenizer, cfg, args.prompts, data)
    prompt_tokens = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    n_params = sum(p.numel() for p in model.parameters())
    flops_per_token = 2 * n_params
    load_before = os.getloadavg()
    workloads = {
        "sampled": dict(temperature=cfg.temperature, top_p=cfg.top_p, num_return_sequences=cfg.k_pos),
        "greedy": dict(temperature=0.0),
    }
    generate(model, tokenizer, prompts[:2], max_new_tokens=4, batch_size=2, engine="hf")  # warm-up
    generate(model, tokenizer, prompts[:2], max_new_tokens=4, batch_size=2, engine="lean")
    rate = {name: {"hf": [], "lean": []} for name in workloads}
    mm = [matmul_flops()]
    for r in range(args.rounds):
        for name, kw in workloads.items():
            for engine in (("hf", "lean") if r % 2 == 0 else ("lean", "hf")):
                t0 = time.perf_counter()
                gens = generate(model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                                seed=r, engine=engine, **kw)
                dt = time.perf_counter() - t0
                rate[name][engine].append(sum(g.n_tokens for gs in gens for g in gs) / dt)
                print(f"round {r} {name} {engine}: {rate[name][engine][-1]:.1f} tokens/s", file=sys.stderr, flush=True)
        mm.append(matmul_flops(1.0))
    matmul = statistics.median(mm)
    out = {
        "bench": "generation_throughput", "model": args.model, "params": n_params, "data": data.name,
        "prompts": len(prompts), "prompt_tokens_mean": round(statistics.mean(prompt_tokens), 1),
        "batch_size": cfg.batch_size, "k": cfg.k_pos, "max_new_tokens": cfg.max_new_tokens, "rounds": args.rounds,
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "shared_machine": True, "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "matmul_gflops": round(matmul / 1e9, 1), "matmul_gflops_range": [round(min(mm) / 1e9, 1), round(max(mm) / 1e9, 1)],
        "gflop_per_token": round(flops_per_token / 1e9, 3),
        "bound_tokens_per_s": round(matmul / flops_per_token, 1),
    }
    for name in workloads:
        hf, lean = rate[name]["hf"], rate[name]["lean"]
        ratios = [b / a for a, b in zip(hf, lean)]
        out[name] = {
            "hf_tokens_per_s": round(statistics.median(hf), 1), "lean_tokens_per_s": round(statistics.median(lean), 1),
            "speedup_median": round(statistics.median(ratios), 2), "speedup_per_round": [round(x, 2) for x in ratios],
            "hf_fraction_of_bound": round(statistics.median(hf) * flops_per_token / matmul, 3),
            "lean_fraction_of_bound": round(statistics.median(lean) * flops_per_token / matmul, 3),
        }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
