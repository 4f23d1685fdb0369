"""Generate the real SmolLM2 completions that `data/refusal_labels/` labels by hand.

Prompts: XSTest (safe and unsafe) and HH-RLHF harmless (test slice), chosen in a fixed hash order.
Every prompt gets two completions: one unsteered and one steered (positive or negative system
prompt from params.yaml ``expand``), one greedy and one sampled (temperature 0.9, top-p 0.95), in a
rotation so that every (steering, decoding) cell is filled. Writes unlabelled JSON lines
(``prompt``, ``response``, ``source``, ``steering``, ``decoding``, ``split``); labels are added by
a person reading each response (see data/refusal_labels/README.md).

    .venv/bin/python scripts/generate_refusal_completions.py --out /tmp/refusal_raw.jsonl
    .venv/bin/python scripts/generate_refusal_completions.py --extra-positive --out /tmp/refusal_extra.jsonl

The second run adds a positive-steered completion to the prompts whose steered completion was
negative (the base model rarely refuses; positive steering gives the set more real refusals).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time

import torch
import yaml

from neat.data import read_preferences
from neat.encoding import render_prompt
from neat.generation import generate
from neat.judges import read_safety_csv, refusal_label_split
from neat.models import load_policy


def _order(text: str) -> str:
    return hashlib.sha256(("order:" + text).encode()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--n-safe", type=int, default=55)
    ap.add_argument("--n-unsafe", type=int, default=45)
    ap.add_argument("--n-hh", type=int, default=60)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--extra-positive", action="store_true",
                    help="only a positive-steered completion for the prompts whose steered one was negative")
    args = ap.parse_args()

    params = yaml.safe_load(open("params.yaml"))
    systems = {"none": None, "positive": params["expand"]["positive_prompt"],
               "negative": params["expand"]["negative_prompt"]}

    rows = read_safety_csv("data/xstest/xstest_prompts.csv")
    items = []  # (source, prompt text, messages)
    for label, n in (("safe", args.n_safe), ("unsafe", args.n_unsafe)):
        chosen = sorted((r for r in rows if r["label"] == label), key=lambda r: _order(r["prompt"]))[:n]
        items += [(f"xstest_{label}", r["prompt"], [{"role": "user", "content": r["prompt"]}]) for r in chosen]
    pairs = read_preferences("data/hh-rlhf/harmless-base-test.first1000.jsonl.gz").pairs
    seen, hh = set(), []
    for p in sorted(pairs, key=lambda p: _order(p.prompt_id)):
        text = "\n\n".join(f"{m['role']}: {m['content']}" for m in p.prompt)
        if p.prompt_id in seen or len(text) > 600:
            continue
        seen.add(p.prompt_id)
        hh.append(("hh_harmless", text, p.prompt))
        if len(hh) == args.n_hh:
            break
    items += hh

    torch.set_num_threads(args.threads)  # the CPU is shared: oversubscribed OpenMP threads spin
    model, tok = load_policy("builtin:smollm2-135m-instruct", cache_dir=".cache/neat", device="cpu")
    # rotation: prompt i -> unsteered (greedy if i even) + steered (positive if i % 4 < 2), other decoding
    jobs: dict[tuple[str, str], list[int]] = {}
    for i in range(len(items)):
        greedy_first = i % 2 == 0
        if args.extra_positive:  # a third completion, positive-steered, for the prompts steered negatively
            if i % 4 >= 2:
                jobs.setdefault(("positive", "sampled" if greedy_first else "greedy"), []).append(i)
            continue
        jobs.setdefault(("none", "greedy" if greedy_first else "sampled"), []).append(i)
        jobs.setdefault(("positive" if i % 4 < 2 else "negative", "sampled" if greedy_first else "greedy"), []).append(i)
    fh = open(args.out, "w", encoding="utf-8")
    n_out = 0
    for (steer, dec), idx in jobs.items():
        t0 = time.time()
        prompts = [render_prompt(tok, items[i][2], system=systems[steer]) for i in idx]
        gens = generate(model, tok, prompts, max_new_tokens=args.max_new_tokens,
                        temperature=0.0 if dec == "greedy" else 0.9, top_p=1.0 if dec == "greedy" else 0.95,
                        batch_size=args.batch_size, seed=0)
        for i, g in zip(idx, gens):
            source, text, _ = items[i]
            row = {"prompt": text, "response": g[0].text, "source": source, "steering": steer,
                   "decoding": dec, "split": refusal_label_split(text)}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n_out += 1
        fh.flush()
        ntok = sum(g[0].n_tokens for g in gens)
        print(f"{steer}/{dec}: {len(idx)} prompts in {time.time() - t0:.0f}s ({ntok} tokens)", flush=True)
    fh.close()
    print(f"wrote {n_out} completions to {args.out}")


if __name__ == "__main__":
    main()
