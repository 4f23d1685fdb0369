"""Generation throughput on CPU: transformers' generate (hf) vs our lean decode loop (not a timed test).

    python benchmarks/generation_throughput.py                      # SmolLM2-135M, expansion-shaped workload
    python benchmarks/generation_throughput.py --model builtin:tiny-random --prompts 8 --rounds 1

Prints one JSON line. Workload: the pipeline's own expansion prompts (positive steering prompt +
in-context demos from params.yaml's expand section, rendered with the chat template) for the first
`--prompts` prompts of the HH slice (or the demo data), at the pipeline's sizes: expand.batch_size
prompts per batch, expand.k_pos samples per prompt (temperature/top_p from params.yaml), and the
greedy single-sample pass evaluation and the online probe use. The `expand` workload is `neat expand`'s own
call (`neat.steering.sample_candidates`) on the same `--prompts` prompts: positive *and* negative steering, each
with the demonstrations `expand.demo_origins` gives it (by default the negative prompt only: 2 rejected
answers) and `expand.negative_opening`, k_pos / k_neg samples; the first two workloads keep the shape they had
when demonstrations went to both prompts (positive steering + 2 chosen demos), for comparison across sessions.

Engines: hf (transformers' generate, expand.batch_size prompts per batch), lean_bs (the lean loop at
the same batch_size: shared prefill of the common prompt start, KV cache written in place, finished
rows dropped), lean_solo (the lean loop with params' generation.batch_tokens budget, each batch decoded on its
own), lean (the same, with consecutive batches decoded together up to params' generation.decode_tokens, the
default) — all four float32 —
and lean_bf16 (lean with a bfloat16 copy of the model: the default where the CPU has native bf16,
generation.cpu_dtype: auto) with its Linear weights packed for oneDNN (`neat.packed_linear`), and
lean_bf16_unpacked (the same without packing, the default before it). lean_bf16's fraction of the bound is
against the bf16 matmul rate, `greedy_identical_bf16_vs_float32` says how many greedy answers the bf16 copy
leaves unchanged, and `greedy_identical_packed_vs_unpacked` must be 1.0 (packing changes no output bit).
`--engines` times a subset (hf, the baseline of every speedup, is always timed).

The machine is shared with other jobs, so the engines are timed interleaved in one process
(alternating which goes first each round) and the JSON reports per-round paired ratios and their
median next to the absolute numbers, plus the load average before and after. The compute bound is
the measured fp32 matmul rate (1024² GEMM, same threads) ÷ 2 × parameters FLOPs per generated token;
`fraction_of_bound` = tokens/s × FLOPs per token ÷ matmul rate (prefill FLOPs are not credited).
Per engine and workload the forward calls are split into prefills and decode steps (`*_prefill_s`, `*_calls`,
`*_positions`, medians over rounds), and `*_speedup_if_decode_free` is hf's time over the engine's prefill time:
the most any faster decode loop could give on this prompt set.
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


def matmul_flops(seconds: float = 2.0, dtype=None) -> float:
    import torch

    n = 1024
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0)


class ForwardClock:
    """Seconds, calls and input positions of every forward call of models of class `cls` while active, split
    into prefills (several new positions per row) and decode steps (one), for either engine."""

    def __init__(self, cls):
        self.cls, self.real = cls, cls.forward
        self.totals = {kind: {"seconds": 0.0, "calls": 0, "positions": 0} for kind in ("prefill", "decode")}

    def __enter__(self):
        real, totals = self.real, self.totals

        def forward(model, *args, **kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            start = time.perf_counter()
            out = real(model, *args, **kwargs)
            entry = totals["decode" if ids is not None and ids.shape[-1] == 1 else "prefill"]
            entry["seconds"] += time.perf_counter() - start
            entry["calls"] += 1
            entry["positions"] += ids.numel() if ids is not None else 0
            return out

        self.cls.forward = forward
        return self

    def __exit__(self, *exc):
        self.cls.forward = self.real


def expansion_prompts(tokenizer, cfg, n: int, data: Path) -> list[str]:
    from neat.data import read_preferences
    from neat.steering import pick_demos, select_prompts, steered_prompt

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
    ap.add_argument("--batch-tokens", type=int, default=None, help="lean engine budget (default: params.yaml's)")
    ap.add_argument("--decode-tokens", type=int, default=None,
                    help="lean engine decode budget (default: params.yaml's generation.decode_tokens)")
    ap.add_argument("--workloads", default="sampled,greedy,expand")
    ap.add_argument("--engines", default="hf,lean_bs,lean_solo,lean,lean_bf16_unpacked,lean_bf16")
    ap.add_argument("--set", "-S", action="append", default=[], help="params.yaml override, e.g. expand.demo_scope=round")
    args = ap.parse_args()

    import torch

    from neat.config import load_params
    from neat.data import read_preferences
    from neat.generation import generate, use_generation_params
    from neat.models import load_policy, native_bf16
    from neat.packed_linear import use_packed_weights
    from neat.steering import sample_candidates, select_prompts

    params = load_params(ROOT / "params.yaml", overrides=args.set)
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
        "expand": {},
    }
    workloads = {name: workloads[name] for name in args.workloads.split(",")}
    budget = params.generation.batch_tokens if args.batch_tokens is None else args.batch_tokens
    f32 = dict(cpu_dtype="float32")
    decode = params.generation.decode_tokens if args.decode_tokens is None else args.decode_tokens
    lean = dict(engine="lean", batch_tokens=budget, decode_tokens=decode)
    engines = {"hf": dict(engine="hf", **f32), "lean_bs": dict(engine="lean", batch_tokens=0, decode_tokens=0, **f32),
               "lean_solo": dict(lean, decode_tokens=0, **f32), "lean": dict(lean, **f32),
               "lean_bf16_unpacked": dict(lean, cpu_dtype="bfloat16"), "lean_bf16": dict(lean, cpu_dtype="bfloat16")}
    wanted = set(args.engines.split(",")) | {"hf"}
    engines = {name: kw for name, kw in engines.items() if name in wanted}

    def run(engine, *a, **kw):
        use_packed_weights(engine != "lean_bf16_unpacked")  # the bf16 copy is packed or unpacked at each call
        return generate(model, tokenizer, *a, **engines[engine], **kw)

    pairs = read_preferences(data).pairs
    groups = select_prompts(pairs, args.prompts)

    def run_expand(engine, seed: int) -> int:
        """`neat expand`'s sampling with `engine` as the stage would set it; the generated tokens."""
        use_packed_weights(engine != "lean_bf16_unpacked")
        kw = engines[engine]
        use_generation_params(params.generation.model_copy(update={
            "engine": kw["engine"], "batch_tokens": kw.get("batch_tokens", 0), "decode_tokens": kw.get("decode_tokens", 0),
            "cpu_dtype": kw["cpu_dtype"]}))
        _, stats = sample_candidates(model, tokenizer, groups, pairs, cfg, seed=seed, policy_id="benchmark",
                                     round_=1, progress=False)
        return stats["generated_tokens"]

    for engine in engines:  # warm-up
        run(engine, prompts[:2], max_new_tokens=4, batch_size=2)
    rate = {name: {e: [] for e in engines} for name in workloads}
    greedy_texts = {e: [] for e in engines}
    cpu_rate = {name: {e: [] for e in engines} for name in workloads}
    seconds = {name: {e: [] for e in engines} for name in workloads}
    forwards = {name: {e: [] for e in engines} for name in workloads}  # per round: ForwardClock totals
    mm = [matmul_flops()]
    mm_bf16 = matmul_flops(dtype=torch.bfloat16)
    for r in range(args.rounds):
        for name, kw in workloads.items():
            for engine in (list(engines) if r % 2 == 0 else list(engines)[::-1]):
                t0, c0 = time.perf_counter(), time.process_time()
                with ForwardClock(type(model)) as clock:
                    if name == "expand":
                        n = run_expand(engine, seed=r)
                    else:
                        gens = run(engine, prompts, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                                   seed=r, **kw)
                        n = sum(g.n_tokens for gs in gens for g in gs)
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                rate[name][engine].append(n / dt)
                seconds[name][engine].append(dt)
                forwards[name][engine].append(clock.totals)
                if name == "greedy" and r == 0:
                    greedy_texts[engine] = [gs[0].text for gs in gens]
                cpu_rate[name][engine].append(n / dc * torch.get_num_threads())  # tokens/s had we had the threads' cores
                print(f"round {r} {name} {engine}: {rate[name][engine][-1]:.1f} tokens/s "
                      f"({cpu_rate[name][engine][-1]:.1f} per CPU-time) load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
        mm.append(matmul_flops(1.0))
    matmul = statistics.median(mm)
    out = {
        "bench": "generation_throughput", "model": args.model, "params": n_params, "data": data.name,
        "prompts": len(prompts), "prompt_tokens_mean": round(statistics.mean(prompt_tokens), 1),
        "batch_size": cfg.batch_size, "batch_tokens": budget, "decode_tokens": decode, "k": cfg.k_pos, "max_new_tokens": cfg.max_new_tokens, "rounds": args.rounds,
        "expand_k": [cfg.k_pos, cfg.k_neg], "expand_demo_origins": list(cfg.demo_origins), "expand_n_demos": cfg.n_demos,
        "expand_demo_scope": cfg.demo_scope, "overrides": args.set,
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "shared_machine": True, "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "matmul_gflops": round(matmul / 1e9, 1), "matmul_gflops_range": [round(min(mm) / 1e9, 1), round(max(mm) / 1e9, 1)],
        "gflop_per_token": round(flops_per_token / 1e9, 3),
        "bound_tokens_per_s": round(matmul / flops_per_token, 1),
        "matmul_gflops_bf16": round(mm_bf16 / 1e9, 1), "native_bf16": native_bf16(torch.device("cpu")),
        "bound_tokens_per_s_bf16": round(mm_bf16 / flops_per_token, 1),
    }
    for key, (a, b) in {"greedy_identical_bf16_vs_float32": ("lean", "lean_bf16"),  # bf16 rounding: paths part
                        "greedy_identical_packed_vs_unpacked": ("lean_bf16_unpacked", "lean_bf16")}.items():
        if greedy_texts.get(a) and greedy_texts.get(b):
            out[key] = round(sum(x == y for x, y in zip(greedy_texts[a], greedy_texts[b])) / len(greedy_texts[a]), 3)
    for name in workloads:
        hf = rate[name]["hf"]
        out[name] = {}
        for engine in engines:
            ours = rate[name][engine]
            out[name][f"{engine}_tokens_per_s"] = round(statistics.median(ours), 1)
            out[name][f"{engine}_tokens_per_cpu_s"] = round(statistics.median(cpu_rate[name][engine]), 1)
            bound = mm_bf16 if engine.endswith("bf16") else matmul  # each against its own dtype's matmul rate
            out[name][f"{engine}_fraction_of_bound"] = round(statistics.median(ours) * flops_per_token / bound, 3)
            for kind in ("prefill", "decode"):
                runs = [f[kind] for f in forwards[name][engine]]
                out[name][f"{engine}_{kind}_s"] = round(statistics.median(f["seconds"] for f in runs), 2)
                out[name][f"{engine}_{kind}_calls"] = round(statistics.median(f["calls"] for f in runs))
                out[name][f"{engine}_{kind}_positions"] = round(statistics.median(f["positions"] for f in runs))
            # how far this engine could go were its decode steps free: hf's time over this engine's prefills
            out[name][f"{engine}_speedup_if_decode_free"] = round(statistics.median(
                h / f["prefill"]["seconds"] for h, f in zip(seconds[name]["hf"], forwards[name][engine])), 2)
            if engine != "hf":
                ratios = [b / a for a, b in zip(hf, ours)]
                out[name][f"{engine}_speedup_median"] = round(statistics.median(ratios), 2)
                out[name][f"{engine}_speedup_per_round"] = [round(x, 2) for x in ratios]
        if "lean_bf16" in engines and "lean_bf16_unpacked" in engines:
            ratios = [b / a for a, b in zip(rate[name]["lean_bf16_unpacked"], rate[name]["lean_bf16"])]
            out[name]["packed_vs_unpacked_speedup_median"] = round(statistics.median(ratios), 2)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
