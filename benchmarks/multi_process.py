"""Training with several CPU processes under `accelerate launch`: DDP vs FSDP vs one process (not a test).

    python benchmarks/multi_process.py                                       # tiny model, quick
    python benchmarks/multi_process.py --model builtin:smollm2-135m-instruct --prompts 8 \
        --batch-prompts 4 --steps 2 --max-prompt-tokens 128 --max-response-tokens 48

Three configurations train the same model on the same prompts and global batch (`--batch-prompts`
prompts x 4 candidates per optimizer step, as in `train_throughput.py`: a prompt's chosen and
rejected responses and those of the next pair, rewards 3, 2, 1, 0), fp32, AdamW, full fine-tuning
unless `--lora`:

* `single`: one process (`train.parallel` unused) with all the machine's cores as threads (or
  `--single-threads N`, e.g. 1 to set one core against one process of the others);
* `ddp`, `fsdp`: `--processes` processes under `accelerate launch` (gloo), `train.parallel` = ddp /
  fsdp, the cores split between them (OMP_NUM_THREADS = cores / processes).

Each configuration runs in its own processes. The first optimizer step is a warm-up; the next
`--steps` are timed (model loading, sharding and the final gather are not). One JSON line per
configuration, then a summary line:

* `candidate_seqs_per_s`: candidates (one prompt + response the loss sees) of the timed steps, over
  all processes, divided by the wall time of those steps (the slowest rank's); `steps_per_s` likewise;
* `peak_rss_mb` (MB = 2**20 bytes, as everywhere here): ru_maxrss of each rank, taken before the
  final gather, max over ranks;
* `train_state_mb`: bytes this rank holds of parameters + gradients + AdamW state (its local shard
  under FSDP), max over ranks, with the three parts: FSDP should hold about 1/W of DDP's;
* `final_loss` (global loss of the last step) and `max_abs_weight_diff_vs_single`: the full weights
  after training against the one-process run's; `max_weight_change_single` (how far the single run
  moved the weights from their initial values) gives the scale that difference is small against.

On CPU, W processes share the same cores as one process, so `speedup_vs_single` mostly says how
well one process uses its threads, and it swings with whatever else the machine runs (a busy core
slows one multi-threaded process most); `train_state_mb` and the weight/loss agreement are the
stable figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as tt  # noqa: E402  (sets ROOT on sys.path and the offline env defaults)

ROOT = tt.ROOT


def _params(args, parallel: str):
    params = tt._params(args)
    lora = params.policy.lora.model_copy(update={"enabled": args.lora, "dropout": 0.0})  # same masks on any W
    return params.model_copy(update={"policy": params.policy.model_copy(update={"lora": lora}),
                                     "train": params.train.model_copy(update={"parallel": parallel})})


def _mb(tensors) -> float:
    total = 0
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t  # FSDP: this rank's shard of a DTensor
        total += t.numel() * t.element_size()
    return total / 2**20


def worker(args) -> None:
    """One rank: train, then write rank<r>.json (and, on rank 0, the full final weights)."""
    import torch
    from safetensors.torch import save_file

    from neat.encoding import PromptCandidates
    from neat.training.trainer import Trainer, load_trainable_policy, make_scheduler

    run_dir = Path(args.run_dir)
    args.tmp = str(run_dir)
    params = _params(args, args.parallel)
    model, tokenizer = load_trainable_policy(params)
    _, items = tt._workload(args, tokenizer)
    groups = [PromptCandidates(p.prompt_id, p.prompt, texts, [3.0, 2.0, 1.0, 0.0], ["chosen", "rejected", "positive", "negative"])
              for p, _, texts in items]
    trainer = Trainer(params, model, tokenizer, out_dir=run_dir / "train", progress=False)
    trainer.scheduler = make_scheduler(trainer.optimizer, "constant", 0, 1000)
    model.train()
    bsz = args.batch_prompts
    batches = [groups[i : i + bsz] for i in range(0, len(groups), bsz)]
    seconds, candidates, record = 0.0, 0, {}
    for step in range(args.steps + 1):
        batch = batches[step % len(batches)]
        t0 = time.perf_counter()
        record = trainer._optimizer_step([batch], 1, step)  # every rank passes the global batch; it takes its shard
        if step:  # step 0 is the warm-up
            seconds += time.perf_counter() - t0
            candidates += sum(len(g.responses) for g in batch)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optim = [v for p in trainable for v in trainer.optimizer.state[p].values() if torch.is_tensor(v)]
    state = {"params_mb": _mb(model.parameters()), "grads_mb": _mb(p.grad for p in trainable if p.grad is not None),
             "optimizer_mb": _mb(optim)}
    rank = trainer.strategy.rank
    out = {"rank": rank, "world_size": trainer.strategy.world_size, "fsdp": trainer.strategy.name == "fsdp",
           "threads": torch.get_num_threads(), "seconds": seconds, "candidates": candidates, "steps": args.steps,
           "final_loss": record["loss"], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           **state, "train_state_mb": sum(state.values())}
    (run_dir / f"rank{rank}.json").write_text(json.dumps(out))
    policy = trainer.full_policy()  # collective under FSDP; after the RSS reading (it builds a full copy)
    if trainer.is_main:
        weights = {k: p.detach().contiguous() for k, p in policy.named_parameters()}
        save_file(weights, str(run_dir / "weights.safetensors"))
    if trainer.strategy.world_size > 1:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(name: str, parallel: str, processes: int, args, argv: list[str]) -> dict:
    """Run one configuration in fresh processes; its summary from the ranks' JSON files."""
    run_dir = Path(args.out) / name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    threads = max(1, (os.cpu_count() or 1) // processes)
    if processes == 1 and args.single_threads:
        threads = args.single_threads
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    script = [__file__, *argv, "--worker", "--parallel", parallel, "--run-dir", str(run_dir)]
    if processes == 1:
        cmd = [sys.executable, *script]
    else:
        accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate"
        cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), *script]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    ranks = [json.loads((run_dir / f"rank{r}.json").read_text()) for r in range(processes)]
    seconds = max(r["seconds"] for r in ranks)
    top = max(ranks, key=lambda r: r["train_state_mb"])
    return {
        "config": name, "parallel": parallel if processes > 1 else None, "processes": processes,
        "threads_per_process": ranks[0]["threads"], "timed_steps": args.steps, "candidates": ranks[0]["candidates"],
        "seconds": round(seconds, 3), "candidate_seqs_per_s": round(ranks[0]["candidates"] / seconds, 3),
        "steps_per_s": round(args.steps / seconds, 4),
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in ranks), 1),
        "train_state_mb": round(top["train_state_mb"], 2),
        **{k: round(top[k], 2) for k in ("params_mb", "grads_mb", "optimizer_mb")},
        "final_loss": ranks[0]["final_loss"],
    }


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:5]
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="builtin:tiny-random")
    ap.add_argument("--data", default=None, help="HH/TRL preference file (default: the shared HH slice, else the demo)")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--batch-prompts", type=int, default=4, help="global prompts per optimizer step (x4 candidates)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps (after one warm-up step)")
    ap.add_argument("--max-prompt-tokens", type=int, default=256)
    ap.add_argument("--max-response-tokens", type=int, default=128)
    ap.add_argument("--single-threads", type=int, default=None,
                    help="threads of the one-process run (default: all cores)")
    ap.add_argument("--lora", action="store_true", help="train LoRA adapters instead of all weights")
    ap.add_argument("--out", default=None, help="where the runs write (default: a temporary directory)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--parallel", default="ddp", help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import warnings

        warnings.filterwarnings("ignore")
        return worker(args)

    argv = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
            if k in ("model", "data", "prompts", "batch_prompts", "steps", "max_prompt_tokens", "max_response_tokens")
            and v is not None] + (["--lora"] if args.lora else [])
    with tempfile.TemporaryDirectory() as tmp:
        args.out = args.tmp = args.out or tmp
        from safetensors.torch import load_file

        from neat.training.trainer import load_trainable_policy

        rows = [launch("single", "ddp", 1, args, argv)]
        single = load_file(str(Path(args.out) / "single" / "weights.safetensors"))
        initial, _ = load_trainable_policy(_params(args, "ddp"))
        moved = _max_diff({k: p.detach() for k, p in initial.named_parameters()}, single)
        del initial
        common = {"bench": "multi_process", "model": args.model, "lora": args.lora, "prompts": args.prompts,
                  "batch_prompts": args.batch_prompts, "candidates_per_prompt": tt.K,
                  "max_prompt_tokens": args.max_prompt_tokens, "max_response_tokens": args.max_response_tokens,
                  "cores": os.cpu_count()}
        rows[0]["max_abs_weight_diff_vs_single"] = 0.0
        print(json.dumps(common | rows[0]), flush=True)
        for parallel in ("ddp", "fsdp"):
            row = launch(parallel, parallel, args.processes, args, argv)
            row["max_abs_weight_diff_vs_single"] = _max_diff(
                load_file(str(Path(args.out) / parallel / "weights.safetensors")), single)
            rows.append(row)
            print(json.dumps(common | row), flush=True)
    base, ddp, fsdp = rows
    print(json.dumps({
        "bench": "multi_process_summary", "model": args.model, "processes": args.processes,
        "max_weight_change_single": moved,
        "speedup_vs_single": {r["config"]: round(r["candidate_seqs_per_s"] / base["candidate_seqs_per_s"], 3)
                              for r in (ddp, fsdp)},
        "fsdp_train_state_vs_ddp": round(fsdp["train_state_mb"] / ddp["train_state_mb"], 3),
        "fsdp_peak_rss_vs_ddp": round(fsdp["peak_rss_mb"] / ddp["peak_rss_mb"], 3),
        "final_loss": {r["config"]: r["final_loss"] for r in rows},
        "max_abs_weight_diff_vs_single": {r["config"]: r["max_abs_weight_diff_vs_single"] for r in (ddp, fsdp)},
    }), flush=True)


if __name__ == "__main__":
    main()
