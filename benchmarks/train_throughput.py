"""Training and expansion throughput: our ranking-loss trainer vs TRL's DPOTrainer (not a timed test).

    python benchmarks/train_throughput.py                                   # tiny model, quick
    python benchmarks/train_throughput.py --model builtin:smollm2-135m-instruct --prompts 8 \
        --batch-prompts 2 --steps 3 --max-prompt-tokens 128 --max-response-tokens 64

Prints two JSON lines:

1. training: candidate sequences per second (a candidate = one prompt + response the loss sees) for
   our trainer (shared-prompt packing; optionally also the unshared layout) and for TRL DPOTrainer on
   the same model, prompts, responses, truncation and machine, their ratio, the peak resident memory
   of each (ru_maxrss of a separate subprocess per trainer, so one never inherits the other's peak),
   and the achieved training FLOP/s as a fraction of the measured fp32 matmul FLOP/s.
2. expansion: generated tokens per second, batched (length-bucketed) vs one prompt at a time.

Workload: each prompt gets K = 4 candidates: its own chosen and rejected responses and those of the
next pair in the file (realistic HH length distribution), with rewards 3, 2, 1, 0. Ours trains on all
four with the configured ranking loss + SFT; DPO sees the same four sequences as two preference pairs
(c0 > c1, c2 > c3). Both do full fine-tuning (no LoRA) in fp32 with AdamW, `--batch-prompts` prompts
(4 x that many candidate sequences) per optimizer step; the first step is a warm-up, not timed.

FLOP counts are the usual dense estimate, attention score FLOPs left out: 6 x (non-embedding
parameters) per token run through the decoder, 6 x hidden x vocab per position sent through the LM
head, and for DPO 2 x (all parameters) per token of the reference model's forward pass.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
HH_SLICE = ROOT.parent / "shared/data/hh-rlhf/harmless-base-test.first1000.jsonl.gz"
DEMO = ROOT / "data/demo/hh_demo.jsonl"
K = 4


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _params(args):
    from neat.config import validate_params

    return validate_params({
        "seed": 0,
        "paths": {"out": str(Path(args.tmp) / "out"), "cache": os.environ.get("NEAT_CACHE_DIR", str(ROOT / ".cache/neat"))},
        "policy": {"model": args.model, "device": "cpu", "dtype": "float32", "lora": {"enabled": False}},
        # the loss terms measured so far (an SFT + ranking loss without the LoRA anchor: LoRA is off here)
        "train": {"rounds": 1, "batch_size": args.batch_prompts, "lr": 1e-5, "schedule": "constant",
                  "rank_weight": 1.0, "sft_target": "best", "anchor_weight": 0.0,
                  "max_prompt_tokens": args.max_prompt_tokens, "max_response_tokens": args.max_response_tokens,
                  "logprob_chunk": 1024},
    })


def _workload(args, tokenizer):
    """[(prompt ids, [response ids x K])] with the truncation both trainers use, plus their texts."""
    from neat.data import read_preferences
    from neat.encoding import encode_prompt, encode_response

    path = Path(args.data) if args.data else (HH_SLICE if HH_SLICE.exists() else DEMO)
    pairs = read_preferences(path).pairs
    n = args.prompts
    if len(pairs) < n + 1:
        raise SystemExit(f"{path}: only {len(pairs)} pairs, need {n + 1}")
    items = []
    for i in range(n):
        p, q = pairs[i], pairs[i + 1]
        texts = [p.chosen, p.rejected, q.chosen, q.rejected]
        prompt_ids = encode_prompt(tokenizer, p.prompt, args.max_prompt_tokens)
        # truncate the texts once so both trainers tokenise exactly the same responses
        resp_ids = [encode_response(tokenizer, t, args.max_response_tokens) for t in texts]
        eos = tokenizer.eos_token_id
        resp_texts = [tokenizer.decode([x for x in r if x != eos]) for r in resp_ids]
        items.append((p, prompt_ids, resp_texts))
    return path, items


def worker_ours(args) -> dict:
    import torch

    from neat.encoding import PromptCandidates, batch_tokens
    from neat.training.trainer import Trainer, load_trainable_policy, make_scheduler

    params = _params(args)
    model, tokenizer = load_trainable_policy(params)
    rss_loaded = _rss_mb()
    path, items = _workload(args, tokenizer)
    groups = [PromptCandidates(p.prompt_id, p.prompt, texts, [3.0, 2.0, 1.0, 0.0], ["chosen", "rejected", "positive", "negative"])
              for p, _, texts in items]
    trainer = Trainer(params, model, tokenizer, out_dir=Path(args.tmp) / "ours", progress=False)
    trainer.shared_prompt = trainer.shared_prompt and not args.unshared
    trainer.scheduler = make_scheduler(trainer.optimizer, "constant", 0, 1000)
    model.train()
    bsz = args.batch_prompts
    batches = [groups[i : i + bsz] for i in range(0, len(groups), bsz)]
    times, seqs, tokens, head_rows = [], 0, 0, 0
    for step in range(args.steps + 1):
        batch_groups = batches[step % len(batches)]
        t0 = time.perf_counter()
        trainer._optimizer_step([batch_groups], 1, step)
        dt = time.perf_counter() - t0
        if step == 0:
            continue  # warm-up
        times.append(dt)
        b = trainer.collate(batch_groups)
        seqs += sum(len(g.responses) for g in batch_groups)
        tokens += batch_tokens(b)
        head_rows += int(b.response_mask.sum())
    elapsed = sum(times)
    return {"layout": "unshared" if not trainer.shared_prompt else "shared_prompt", "data": str(path),
            "seconds": elapsed, "candidate_seqs": seqs, "tokens_run": tokens, "head_rows": head_rows,
            "ref_tokens": 0, "rss_loaded_mb": rss_loaded, "peak_rss_mb": _peak_mb(),
            **_model_sizes(model)}


def worker_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from neat.encoding import render_prompt
    from neat.training.trainer import load_trainable_policy

    params = _params(args)
    model, tokenizer = load_trainable_policy(params)
    ref_model, _ = load_trainable_policy(params)
    ref_model.eval().requires_grad_(False)
    rss_loaded = _rss_mb()
    path, items = _workload(args, tokenizer)
    rows = []
    for p, prompt_ids, texts in items:
        prompt_text = tokenizer.decode(prompt_ids)
        rows.append({"prompt": prompt_text, "chosen": texts[0], "rejected": texts[1]})
        rows.append({"prompt": prompt_text, "chosen": texts[2], "rejected": texts[3]})
    # keep pairs of the same prompt in the same step, in order
    dataset = Dataset.from_list(rows)
    pairs_per_step = args.batch_prompts * K // 2
    stamps: list[float] = []
    token_counts: list[tuple[int, int]] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            stamps.append(time.perf_counter())

        def on_step_end(self, a, state, control, **kw):
            stamps.append(time.perf_counter())

    config = DPOConfig(
        output_dir=str(Path(args.tmp) / "trl"), per_device_train_batch_size=pairs_per_step,
        gradient_accumulation_steps=1, learning_rate=1e-5, lr_scheduler_type="constant", max_steps=args.steps + 1,
        max_length=args.max_prompt_tokens + args.max_response_tokens + 1, logging_steps=10_000,
        save_strategy="no", report_to="none", use_cpu=True, bf16=False, fp16=False, dataloader_num_workers=0,
        seed=0, disable_dropout=True, beta=0.1, dataset_num_proc=None, remove_unused_columns=False,
        data_seed=0,
    )
    class CountingDPOTrainer(DPOTrainer):
        """Records the real (non-padding) tokens and sequences of every training batch."""

        def compute_loss(self, model, inputs, *a, **kw):
            token_counts.append((int(inputs["attention_mask"].sum()), int(inputs["input_ids"].shape[0])))
            return super().compute_loss(model, inputs, *a, **kw)

    trainer = CountingDPOTrainer(model=model, ref_model=ref_model, args=config, train_dataset=dataset,
                                 processing_class=tokenizer, callbacks=[Clock()])
    trainer.train()
    steps = [stamps[i + 1] - stamps[i] for i in range(0, len(stamps) - 1, 2)][1:]  # drop warm-up
    timed = token_counts[1:]
    tokens = sum(t for t, _ in timed)
    return {"data": str(path), "seconds": sum(steps), "candidate_seqs": sum(n for _, n in timed), "tokens_run": tokens,
            "head_rows": tokens, "ref_tokens": tokens, "rss_loaded_mb": rss_loaded, "peak_rss_mb": _peak_mb(),
            **_model_sizes(model)}


def _model_sizes(model) -> dict:
    emb = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    hidden, vocab = emb.shape[1], emb.shape[0]
    return {"params": total, "body_params": total - emb.numel(), "hidden": hidden, "vocab": vocab}


def worker_matmul(args) -> dict:
    import torch

    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 2.0:
        a @ b
        reps += 1
    return {"matmul_flops": 2 * n**3 * reps / (time.perf_counter() - t0), "threads": torch.get_num_threads()}


def worker_expand(args) -> dict:
    from neat.data import read_preferences
    from neat.encoding import render_prompt
    from neat.generation import generate
    from neat.models import load_policy

    params = _params(args)
    model, tokenizer = load_policy(args.model, cache_dir=params.paths.cache, device="cpu", dtype="float32", seed=0)
    path = Path(args.data) if args.data else (HH_SLICE if HH_SLICE.exists() else DEMO)
    pairs = read_preferences(path).pairs[: args.expand_prompts]
    prompts = []
    for p in pairs:
        ids = tokenizer(render_prompt(tokenizer, p.prompt), add_special_tokens=False)["input_ids"][-args.max_prompt_tokens :]
        prompts.append(tokenizer.decode(ids))
    out = {"data": str(path), "prompts": len(prompts), "max_new_tokens": args.expand_new_tokens}
    for name, bs in (("batched", args.expand_batch), ("one_at_a_time", 1)):
        generate(model, tokenizer, prompts[:1], max_new_tokens=4, batch_size=1)  # warm-up
        t0 = time.perf_counter()
        gens = generate(model, tokenizer, prompts, max_new_tokens=args.expand_new_tokens, temperature=0.9, top_p=0.95,
                        num_return_sequences=2, batch_size=bs, seed=0)
        dt = time.perf_counter() - t0
        toks = sum(g.n_tokens for gs in gens for g in gs)
        out[f"{name}_tokens"] = toks
        out[f"{name}_seconds"] = round(dt, 3)
        out[f"{name}_tokens_per_s"] = round(toks / dt, 1)
    return out


WORKERS = {"ours": worker_ours, "trl": worker_trl, "matmul": worker_matmul, "expand": worker_expand}


def _run_worker(name: str, argv: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"worker {name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _flops(r: dict) -> float:
    return (6 * r["body_params"] * r["tokens_run"] + 6 * r["hidden"] * r["vocab"] * r["head_rows"]
            + 2 * r["params"] * r["ref_tokens"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="builtin:tiny-random")
    ap.add_argument("--data", default=None, help="HH/TRL preference file (default: the shared HH slice, else the demo)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--batch-prompts", type=int, default=4, help="prompts per optimizer step (x4 candidate sequences)")
    ap.add_argument("--steps", type=int, default=6, help="timed steps (after one warm-up step)")
    ap.add_argument("--max-prompt-tokens", type=int, default=256)
    ap.add_argument("--max-response-tokens", type=int, default=128)
    ap.add_argument("--with-unshared", action="store_true", help="also time our trainer without prompt sharing")
    ap.add_argument("--expand-prompts", type=int, default=16)
    ap.add_argument("--expand-new-tokens", type=int, default=32)
    ap.add_argument("--expand-batch", type=int, default=8)
    ap.add_argument("--no-expand", action="store_true")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--unshared", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import tempfile
        import warnings

        warnings.filterwarnings("ignore")
        with tempfile.TemporaryDirectory() as tmp:
            args.tmp = tmp
            print(json.dumps(WORKERS[args.worker](args)))
        return

    argv = [a for a in sys.argv[1:]]
    matmul = _run_worker("matmul", argv)
    ours = _run_worker("ours", argv)
    unshared = _run_worker("ours", argv + ["--unshared"]) if args.with_unshared else None
    trl = _run_worker("trl", argv)

    def summary(r):
        sps = r["candidate_seqs"] / r["seconds"]
        fl = _flops(r) / r["seconds"]
        return {"candidate_seqs_per_s": round(sps, 3), "peak_rss_mb": round(r["peak_rss_mb"], 1),
                "peak_rss_above_loaded_mb": round(r["peak_rss_mb"] - r["rss_loaded_mb"], 1),
                "tokens_run": r["tokens_run"], "candidate_seqs": r["candidate_seqs"], "seconds": round(r["seconds"], 3),
                "train_flops_per_s": round(fl / 1e9, 3) * 1e9, "flops_fraction_of_matmul": round(fl / matmul["matmul_flops"], 4)}

    line = {
        "bench": "train_throughput", "model": args.model, "data": ours["data"], "prompts": args.prompts,
        "candidates_per_prompt": K, "batch_prompts": args.batch_prompts, "timed_steps": args.steps,
        "max_prompt_tokens": args.max_prompt_tokens, "max_response_tokens": args.max_response_tokens,
        "device": "cpu", "dtype": "float32", "threads": matmul["threads"],
        "matmul_gflops": round(matmul["matmul_flops"] / 1e9, 2),
        "ours": summary(ours), "trl_dpo": summary(trl),
    }
    if unshared is not None:
        line["ours_unshared"] = summary(unshared)
    line["speedup_vs_trl"] = round(line["ours"]["candidate_seqs_per_s"] / line["trl_dpo"]["candidate_seqs_per_s"], 3)
    line["peak_memory_ratio_vs_trl"] = round(ours["peak_rss_mb"] / trl["peak_rss_mb"], 3)
    line["target_met"] = line["speedup_vs_trl"] >= 2 and ours["peak_rss_mb"] <= trl["peak_rss_mb"]
    print(json.dumps(line), flush=True)
    if not args.no_expand:
        print(json.dumps({"bench": "expansion_throughput", "model": args.model, **_run_worker("expand", argv)}), flush=True)


if __name__ == "__main__":
    main()
