"""GPU check of the training path (not a test: needs CUDA). Prints JSON lines.

    python benchmarks/gpu_check.py --tiny DIR [--shape-config CONFIG_JSON]

1. packed (shared-prompt) vs unshared log-probs and gradients on CUDA, fp32 and under bf16 autocast;
2. a few optimizer steps with bf16 autocast + activation checkpointing + packing: losses finite;
3. throughput (candidate sequences/s) and peak GPU memory of a randomly initialised model of the given
   shape (e.g. SmolLM2-135M's config.json), packed vs unshared, fp32 vs bf16 autocast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from neat.config import validate_params  # noqa: E402
from neat.data import read_preferences  # noqa: E402
from neat.encoding import PromptCandidates, collate, collate_packed  # noqa: E402
from neat.losses import LOSSES  # noqa: E402
from neat.models import enable_activation_checkpointing  # noqa: E402
from neat.training.objective import batch_logps, step_loss  # noqa: E402
from neat.training.trainer import Trainer


def groups(n: int) -> list[PromptCandidates]:
    pairs = read_preferences(ROOT / "data/demo/hh_demo.jsonl").pairs
    out = []
    for i in range(n):
        a, b = pairs[i % len(pairs)], pairs[(i + 1) % len(pairs)]
        out.append(PromptCandidates(a.prompt_id, a.prompt, [a.chosen, a.rejected, b.chosen, b.rejected],
                         [3.0, 2.0, 1.0, 0.0], ["chosen", "rejected", "positive", "negative"]))
    return out


DEVICE = "cuda"


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def params(**train):
    return validate_params({"policy": {"device": DEVICE, "lora": {"enabled": False}},
                            "train": {"rounds": 1, "max_prompt_tokens": 256, "max_response_tokens": 128,
                                      "rank_weight": 1.0, "sft_target": "best", "anchor_weight": 0.0,  # LoRA is off
                                      **train}})


def compare_layouts(model, tok, cfg, autocast: bool) -> dict:
    gs = groups(4)
    amp = torch.autocast(DEVICE, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    results = {}
    for name, make in (("unshared", collate), ("packed", collate_packed)):
        model.zero_grad(set_to_none=True)
        batch = make(tok, gs, cfg.max_prompt_tokens, cfg.max_response_tokens, tok.pad_token_id)
        with amp:
            loss, _ = step_loss(model, batch, cfg, LOSSES[cfg.loss])
            logps, _, _ = batch_logps(model, batch, cfg.logprob_chunk)
        loss.backward()
        grads = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
        results[name] = (logps.detach().float(), grads.clone(), float(loss))
    (lu, gu, _), (lp, gp, _) = results["unshared"], results["packed"]
    return {"check": "packed_vs_unshared", "autocast_bf16": autocast,
            "max_abs_logp_diff": float((lu - lp).abs().max()),
            "max_abs_grad_diff": float((gu - gp).abs().max()), "grad_scale": float(gu.abs().max()),
            "loss_unshared": results["unshared"][2], "loss_packed": results["packed"][2]}


def train_steps(model, tok, steps: int, **train) -> dict:
    p = params(batch_size=2, **train)
    gs = groups(steps * 2)
    rows = [{"prompt_id": g.prompt_id, "prompt": g.prompt, "origin": o, "response": r, "reward": w, "rank": 0}
            for g in gs for r, w, o in zip(g.responses, g.rewards, g.origins)]
    if train.get("gradient_checkpointing"):
        enable_activation_checkpointing(model)
    tmp = Path("/tmp/gpu_check_out")
    trainer = Trainer(p, model, tok, out_dir=tmp, progress=False, state_dir=tmp / "state")
    _sync()
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.run(rows, [], [], fingerprint_="gpu-check")
    _sync()
    seconds = time.perf_counter() - start
    if train.get("gradient_checkpointing"):
        disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
        disable()
    losses = [r["loss"] for r in trainer.log]
    return {"check": "train", **train, "steps": len(losses), "losses_finite": all(map(lambda x: x == x, losses)),
            "first_loss": losses[0], "last_loss": losses[-1],
            "candidate_seqs_per_s": round(len(losses) * 2 * 4 / seconds, 2),
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if DEVICE == "cuda" else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", required=True, help="HF directory of the tiny model (tokenizer + weights)")
    ap.add_argument("--shape-config", default=None, help="config.json of a larger model, randomly initialised")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--device", default="cuda", help="cpu only to dry-run this script")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if DEVICE == "cuda":
        assert torch.cuda.is_available(), "needs CUDA"
        print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}), flush=True)
    tok = AutoTokenizer.from_pretrained(args.tiny)
    tiny = AutoModelForCausalLM.from_pretrained(args.tiny, dtype=torch.float32, attn_implementation="sdpa").to(DEVICE)
    cfg = params().train
    for autocast in (False, True):
        print(json.dumps(compare_layouts(tiny, tok, cfg, autocast)), flush=True)
    print(json.dumps(train_steps(tiny, tok, 4, bf16_autocast=True, gradient_checkpointing=True)), flush=True)
    if args.shape_config:
        config = AutoConfig.from_pretrained(str(Path(args.shape_config).parent))
        torch.manual_seed(0)
        big = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa").to(DEVICE)
        print(json.dumps({"shape_params_m": round(sum(p.numel() for p in big.parameters()) / 1e6, 1)}), flush=True)
        for shared in (False, True):
            for autocast in (False, True):
                r = train_steps(big, tok, args.steps, shared_prompt=shared, bf16_autocast=autocast)
                print(json.dumps(r), flush=True)
        print(json.dumps(train_steps(big, tok, args.steps, shared_prompt=True, bf16_autocast=True,
                                     gradient_checkpointing=True)), flush=True)


if __name__ == "__main__":
    main()
