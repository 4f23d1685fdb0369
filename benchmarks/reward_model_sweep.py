"""Reward-model settings measured on a dev split of the *train* split (never the eval prompts).

The train split of `neat prepare` (default `outputs/data/train.jsonl`) is shuffled with a fixed seed and
cut 80/20; each setting trains the reward model on the first part (at most PAIRS pairs) and reports its
pairwise accuracy on the second. One JSON line per setting.

    neat prepare
    python benchmarks/reward_model_sweep.py 128,1,5e-5,550 128,1,3e-4,320 128,1,3e-4,550 128,1,1e-3,320

Each setting is MAX_LENGTH,EPOCHS,LR,PAIRS.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

from neat.data import read_pairs
from neat.models import load_reward_model
from neat.reward import pairwise_accuracy, train_bradley_terry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="+", help="MAX_LENGTH,EPOCHS,LR,PAIRS")
    parser.add_argument("--train", default="outputs/data/train.jsonl")
    parser.add_argument("--model", default="builtin:minilm")
    parser.add_argument("--cache", default=".cache/neat")
    args = parser.parse_args()
    pairs = read_pairs(args.train)
    order = list(range(len(pairs)))
    random.Random(0).shuffle(order)
    cut = int(0.8 * len(pairs))
    fit, dev = [pairs[i] for i in order[:cut]], [pairs[i] for i in order[cut:]]
    for spec in args.settings:
        max_length, epochs, lr, n = spec.split(",")
        model, tokenizer = load_reward_model(args.model, cache_dir=args.cache, device="cpu", dtype="float32", seed=0)
        start = time.perf_counter()
        train_bradley_terry(model, tokenizer, fit[: int(n)], epochs=int(epochs), lr=float(lr), batch_size=16,
                            max_length=int(max_length), seed=0, progress=False)
        seconds = time.perf_counter() - start
        acc = pairwise_accuracy(model, tokenizer, dev, batch_size=32, max_length=int(max_length), progress=False)
        print(json.dumps({"max_length": int(max_length), "epochs": int(epochs), "lr": float(lr),
                          "pairs": len(fit[: int(n)]), "dev_pairs": len(dev), "dev_accuracy": round(acc, 4),
                          "train_seconds": round(seconds, 1), "threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
