"""Can training on the refusal contrast itself teach SmolLM2 *when* to refuse? Offline probe, no sampling.

Trains the LoRA policy (the params' `train` section, one round) on the benign prompts (their base answer
above a stock refusal) and the harmful requests (their written refusal above the base's compliance), i.e.
on nothing but the condition, and reports `benchmarks/refusal_discrimination.py`'s AUC before and after:
on the XSTest dev rows (held out: never trained on, outside both evaluation subsets) and on the training
prompts themselves. In-distribution AUC rising while XSTest's falls means the policy learns the
team-written prompts' style, not the condition. One JSON line per measurement, appended to --results.

    python benchmarks/contrast_probe.py --params params_benchmark.yaml --name rank1 -S train.rank_weight=1.0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.dev_check import xstest_dev_rows  # noqa: E402
from benchmarks.refusal_discrimination import refusal_scores  # noqa: E402
from neat.base_mix import mix_inputs, mix_pairs  # noqa: E402
from neat.config import load_params  # noqa: E402
from neat.diagnostics import refusal_discrimination  # noqa: E402
from neat.training.trainer import Trainer, load_trainable_policy  # noqa: E402

REFUSAL = "I'm sorry, but I can't help with that."  # the benign prompts' worse answer


def contrast_rows(benign, harmful) -> list[dict]:
    """Scored candidate rows: per benign prompt its answer (1) above `REFUSAL` (0); per harmful request its
    written refusal (1) above the base's compliance (0), where the base complied."""
    rows = []
    for pairs, worse in ((benign, lambda p: REFUSAL), (harmful, lambda p: p.rejected)):
        for p in pairs:
            if worse(p) is None:
                continue
            rows += [dict(prompt_id=p.prompt_id, prompt=p.prompt, origin=origin, response=text, reward=reward,
                          rank=rank, round=1, degenerate=False)
                     for origin, text, reward, rank in (("chosen", p.chosen, 1.0, 0), ("rejected", worse(p), 0.0, 1))]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", "-S", action="append", default=[], help="params override, e.g. train.lr=1e-4")
    ap.add_argument("--benign", type=int, default=118, help="first N benign prompts (data.max_benign_prompts)")
    ap.add_argument("--harmful", type=int, default=96, help="first N harmful requests (data.max_harmful_prompts)")
    ap.add_argument("--results", default=None, help="JSONL file the lines are appended to")
    args = ap.parse_args()

    params = load_params(args.params, overrides=args.set + [
        f"data.max_benign_prompts={args.benign}", f"data.max_harmful_prompts={args.harmful}", "train.rounds=1",
        "train.loop_probes=false", "train.dev_prompts=0", "train.checkpoint_every=0"])
    xs = xstest_dev_rows(params)
    benign_prompts, harmful_requests = mix_inputs(params)
    sets = {"xstest_dev": ([r["prompt"] for r in xs], [r["label"] == "unsafe" for r in xs]),
            "training_prompts": (benign_prompts + [h[0] for h in harmful_requests],
                                 [False] * len(benign_prompts) + [True] * len(harmful_requests))}
    model, tokenizer = load_trainable_policy(params)

    def measure(when: str, extra: dict | None = None) -> None:
        model.eval()
        for name, (prompts, unsafe) in sets.items():
            r = refusal_discrimination(refusal_scores(model, tokenizer, prompts, params), unsafe, seed=params.seed)
            line = {"name": args.name, "when": when, "set": name, **r, **(extra or {})}
            print(json.dumps(line), flush=True)
            if args.results:
                with open(args.results, "a", encoding="utf-8") as f:
                    f.write(json.dumps(line) + "\n")
        model.train()

    measure("before")
    started = time.perf_counter()
    benign, harmful, _ = mix_pairs(model, tokenizer, params, (benign_prompts, harmful_requests))
    trainer = Trainer(params, model, tokenizer, out_dir=Path(params.paths.out) / "contrast_probe" / args.name,
                      progress=False, state_dir=Path(params.paths.out) / "contrast_probe" / args.name / "state")
    summary = trainer.run(contrast_rows(benign, harmful), [[p] for p in benign + harmful], [],
                          fingerprint_=args.name)
    measure("after", {"steps": summary["steps"], "train_seconds": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
