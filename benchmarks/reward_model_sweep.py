"""Reward-model settings measured on a dev split of the *train* split (never the eval prompts).

The train split of `neat prepare` (default `outputs/data/train.jsonl`) is shuffled with a fixed seed and
cut 80/20; each setting trains the reward model on the first part (at most PAIRS pairs) and reports its
pairwise accuracy on the second. One JSON line per setting.

    neat prepare
    python benchmarks/reward_model_sweep.py 128,1,5e-5,550 128,1,3e-4,320 128,1,3e-4,550 128,1,1e-3,320
    python benchmarks/reward_model_sweep.py --model builtin:smollm2-135m-instruct --autocast bf16 128,1,3e-5,550

Each setting is MAX_LENGTH,EPOCHS,LR,PAIRS[,MODEL[,AUTOCAST]]: MODEL (default --model) and AUTOCAST (none |
bf16, default --autocast) let one run compare backbones.
With two settings or more, a last line gives the accuracy of their ensemble (each setting's dev margins
divided by their standard deviation, then summed) and how often the settings agree on a pair's order.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

from neat.data import read_pairs
from neat.diagnostics import compare_scores
from neat.models import load_reward_model, save_model
from neat.reward import pair_fields, score_texts, train_bradley_terry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="+", help="MAX_LENGTH,EPOCHS,LR,PAIRS[,MODEL[,AUTOCAST]]")
    parser.add_argument("--train", default="outputs/data/train.jsonl")
    parser.add_argument("--model", default="builtin:minilm")
    parser.add_argument("--cache", default=".cache/neat")
    parser.add_argument("--autocast", choices=("none", "bf16"), default="none",
                        help="bf16: forward passes under CPU bf16 autocast (as reward.bf16_autocast does)")
    parser.add_argument("--save", default=None, help="save setting i's reward model to SAVE/i (e.g. for "
                        "benchmarks/steering_separation.py --rm)")
    args = parser.parse_args()
    pairs = read_pairs(args.train)
    order = list(range(len(pairs)))
    random.Random(0).shuffle(order)
    cut = int(0.8 * len(pairs))
    fit, dev = [pairs[i] for i in order[:cut]], [pairs[i] for i in order[cut:]]
    dev_fields = [pair_fields(p) for p in dev]
    margins = []
    for spec in args.settings:
        max_length, epochs, lr, n, *rest = spec.split(",")
        model_ref, autocast = (rest + [args.model, args.autocast][len(rest):])[:2]
        model, tokenizer = load_reward_model(model_ref, cache_dir=args.cache, device="cpu", dtype="float32", seed=0)
        start = time.perf_counter()
        train_bradley_terry(model, tokenizer, fit[: int(n)], epochs=int(epochs), lr=float(lr), batch_size=16,
                            max_length=int(max_length), seed=0, progress=False,
                            autocast="cpu" if autocast == "bf16" else None)
        seconds = time.perf_counter() - start
        scores = score_texts(model, tokenizer, [p for p, _, _ in dev_fields] * 2,
                             [c for _, c, _ in dev_fields] + [r for _, _, r in dev_fields],
                             batch_size=32, max_length=int(max_length), progress=False)
        margins.append([scores[i] - scores[len(dev) + i] for i in range(len(dev))])
        if args.save:
            save_model(model, tokenizer, Path(args.save) / str(len(margins) - 1))
        print(json.dumps({"model": model_ref, "max_length": int(max_length), "epochs": int(epochs), "lr": float(lr),
                          "pairs": len(fit[: int(n)]), "autocast": autocast, "dev_pairs": len(dev),
                          "dev_accuracy": round(_accuracy(margins[-1]), 4), "train_seconds": round(seconds, 1),
                          "threads": torch.get_num_threads()}), flush=True)
    if len(margins) > 1:
        spread = [statistics.pstdev(m) or 1.0 for m in margins]
        ensemble = [sum(m[i] / s for m, s in zip(margins, spread)) for i in range(len(dev))]
        agree = sum(len({x > 0 for x in column}) == 1 for column in zip(*margins)) / len(dev)
        print(json.dumps({"ensemble_of": args.settings, "dev_pairs": len(dev),
                          "dev_accuracy": round(_accuracy(ensemble), 4), "settings_agree": round(agree, 4)}))


def _accuracy(margins: list[float]) -> float:
    """Share of pairs whose chosen response outscores the rejected one, ties ½ (as `pairwise_accuracy`)."""
    return sum(compare_scores(m, 0.0) for m in margins) / len(margins)


if __name__ == "__main__":
    main()
