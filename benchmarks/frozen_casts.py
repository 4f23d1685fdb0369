"""Training steps with the frozen base weights cast to bf16 once per step vs by autocast in every forward.

    python benchmarks/frozen_casts.py                      # the embedded default's policy, LoRA and loss
    python benchmarks/frozen_casts.py --steps 4 --prompts 2

Runs the default params' training step (LoRA, bf16 autocast, anchor reference pass, shared-prompt
packing) on HH-slice prompts, each with four candidates (its chosen and rejected responses and the next
pair's, rewards 3, 2, 1, 0), alternating the two forms step by step on the same batches so that the
machine's drift hits both alike. Prints one JSON line: seconds per step of each (mean, min), the
speed-up, and whether the losses and gradients of every step were bit-identical. Not a timed test.
Needs a CPU with native bf16 for a meaningful speed figure (elsewhere autocast is emulated and slow).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch

from neat.config import load_params
from neat.data import read_preferences
from neat.encoding import collate_packed
from neat.losses import LOSSES
from neat.training.frozen_weights import FrozenWeightCasts
from neat.training.groups import groups_from_scored
from neat.training.objective import step_loss
from neat.training.trainer import load_trainable_policy

ROOT = Path(__file__).resolve().parents[1]


def candidate_rows(path: Path, n_prompts: int) -> list[dict]:
    pairs = read_preferences(path).pairs[: n_prompts + 1]
    rows = []
    for pair, following in zip(pairs, pairs[1:]):
        texts = [("chosen", pair.chosen), ("rejected", pair.rejected), ("positive", following.chosen),
                 ("negative", following.rejected)]
        for rank, (origin, text) in enumerate(texts):
            rows.append({"prompt_id": pair.prompt_id, "prompt": pair.prompt, "origin": origin, "response": text,
                         "reward": float(3 - rank), "rank": rank})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--prompts", type=int, default=2, help="prompts per step (train.batch_size of the default)")
    ap.add_argument("--steps", type=int, default=6, help="timed steps of each form (after one warm-up step)")
    args = ap.parse_args()

    params = load_params(Path(args.params), {"policy.device": "cpu"})
    cfg = params.train
    model, tokenizer = load_trainable_policy(params)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    groups = groups_from_scored(candidate_rows(ROOT / params.paths.data, args.prompts * (args.steps + 1)))
    batches = [collate_packed(tokenizer, groups[i : i + args.prompts], cfg.max_prompt_tokens,
                              cfg.max_response_tokens, pad) for i in range(0, len(groups), args.prompts)]
    casts = FrozenWeightCasts(model)
    trainable = [p for p in model.parameters() if p.requires_grad]

    def step(batch, block) -> tuple[float, torch.Tensor, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        started = time.perf_counter()
        with block(), torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = step_loss(model, batch, cfg, LOSSES[cfg.loss])
            loss.backward()
        return time.perf_counter() - started, loss.detach(), [p.grad.clone() for p in trainable]

    step(batches[0], contextlib.nullcontext)  # warm-up
    seconds: dict[str, list[float]] = {"autocast_casts": [], "cast_once": []}
    identical = True
    for batch in batches[1 : args.steps + 1]:
        plain = step(batch, contextlib.nullcontext)
        once = step(batch, casts)
        seconds["autocast_casts"].append(plain[0])
        seconds["cast_once"].append(once[0])
        identical &= torch.equal(plain[1], once[1]) and all(torch.equal(a, b) for a, b in zip(plain[2], once[2]))
    mean = {k: statistics.mean(v) for k, v in seconds.items()}
    print(json.dumps({
        "model": params.policy.model, "prompts_per_step": args.prompts, "steps": len(seconds["cast_once"]),
        "frozen_weights_cast": len(casts), "frozen_parameters_cast": sum(w.numel() for w, _, _ in casts.swaps),
        "seconds_per_step": {k: round(v, 3) for k, v in mean.items()},
        "min_seconds_per_step": {k: round(min(v), 3) for k, v in seconds.items()},
        "speedup": round(mean["autocast_casts"] / mean["cast_once"], 3),
        "bit_identical": bool(identical),
    }))


if __name__ == "__main__":
    main()
