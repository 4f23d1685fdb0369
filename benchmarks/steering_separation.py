"""Dev-split check of the steering: does the training reward model rank positive-steered samples
above negative-steered ones, and why not?

For HH prompts of the *train* split from --hh-start on (the default trains on the first 32 per round
and watches the next 16; never the eval split), the policy samples under the positive and the
negative steering prompt exactly as `neat expand` does (`expand.*`, overridable with -S), and both
reward models score every sample and the dataset's chosen and rejected responses on the original
prompt. One JSON line, appended to --results:

- `p_positive_over_negative`: per prompt, the share of (positive, negative) sample pairs whose
  training-RM reward orders positive first (ties ½), averaged over prompts, with a 95 % bootstrap
  interval over prompts; the same under the evaluation RM and, for reference, P(chosen > rejected)
  on the same prompts;
- the mean reward of each origin under both RMs, the share of samples the string-match judge reads
  as refusals and their mean length in words.

    dvc repro train_eval_rm      # needs <out>/data, <out>/reward_model, <out>/eval_reward_model
    python benchmarks/steering_separation.py --name default
    python benchmarks/steering_separation.py --name no-demos -S 'expand.demo_origins=[]'
    python benchmarks/steering_separation.py --name smollm2-rm --rm smollm2=path/to/reward_model  # + its P
    python benchmarks/steering_separation.py --name opened -S 'expand.negative_opening=Sure, here is how:'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from neat.config import load_params  # noqa: E402
from neat.data import read_pairs  # noqa: E402
from neat.diagnostics import compare_scores  # noqa: E402
from neat.generation import use_generation_params  # noqa: E402
from neat.judges import StringMatchJudge  # noqa: E402
from neat.models import load_policy, load_reward_model  # noqa: E402
from neat.reward import score_texts  # noqa: E402
from neat.stats import bootstrap_ci  # noqa: E402
from neat.steering import candidate_rows_from_dataset, sample_candidates, select_prompts  # noqa: E402


def per_prompt_p(rows: list[dict], key: str, better: str, worse: str) -> list[float]:
    """Per prompt: P(key of a `better` row > key of a `worse` row) over all pairs (ties ½)."""
    by_prompt: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_prompt[r["prompt_id"]][r["origin"]].append(r[key])
    out = []
    for origins in by_prompt.values():
        a, b = origins.get(better, []), origins.get(worse, [])
        if a and b:
            out.append(sum(compare_scores(x, y) for x in a for y in b) / (len(a) * len(b)))
    return out


def interval(values: list[float], seed: int) -> list[float] | None:
    return list(bootstrap_ci(values, n_resamples=2000, seed=seed)) if values else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", "-S", action="append", default=[], help="params override, e.g. expand.n_demos=0")
    ap.add_argument("--policy", default=None, help="policy that samples (default: policy.model, the base)")
    ap.add_argument("--hh-start", type=int, default=200)
    ap.add_argument("--hh-prompts", type=int, default=48)
    ap.add_argument("--results", default=None, help="default <out>/steering_separation/results.jsonl")
    ap.add_argument("--rm", action="append", default=[], metavar="NAME=PATH",
                    help="another reward model to score the same samples with (e.g. one trained on another backbone)")
    args = ap.parse_args()
    extra_rms = dict(spec.split("=", 1) for spec in args.rm)

    params = load_params(args.params, overrides=args.set)
    use_generation_params(params.generation)
    out = Path(params.paths.out)
    pairs = read_pairs(out / "data" / "train.jsonl")
    groups = select_prompts(pairs, None)[args.hh_start : args.hh_start + args.hh_prompts]
    if not groups:
        sys.exit(f"{out / 'data' / 'train.jsonl'}: no train-split prompts from --hh-start {args.hh_start}")
    started = time.perf_counter()
    model, tok = load_policy(args.policy or params.policy.model, cache_dir=params.paths.cache,
                             device=params.policy.device, dtype=params.policy.dtype, seed=params.seed)
    rows, _ = sample_candidates(model, tok, groups, pairs, params.expand, seed=params.seed, policy_id="dev",
                                round_=1, progress=True)
    del model
    for g in groups:
        rows += candidate_rows_from_dataset(g, 1)
    judge = StringMatchJudge()
    for name, ref in (("train_rm", out / "reward_model"), ("eval_rm", out / "eval_reward_model"), *extra_rms.items()):
        rm, rm_tok = load_reward_model(str(ref), cache_dir=params.paths.cache, device="cpu")
        scores = score_texts(rm, rm_tok, [r["prompt"] for r in rows], [r["response"] for r in rows],
                             batch_size=params.reward.batch_size, max_length=params.reward.max_length, progress=False)
        for r, s in zip(rows, scores):
            r[name] = s

    by_origin = {}
    for origin in ("positive", "negative", "chosen", "rejected"):
        sel = [r for r in rows if r["origin"] == origin]
        if sel:
            by_origin[origin] = {
                "n": len(sel),
                "train_rm": sum(r["train_rm"] for r in sel) / len(sel),
                "eval_rm": sum(r["eval_rm"] for r in sel) / len(sel),
                "refused": sum(judge.judge([r["response"] for r in sel])) / len(sel),
                "words": sum(len(r["response"].split()) for r in sel) / len(sel),
            }
    seed = params.seed
    result = {
        "name": args.name, "overrides": args.set, "policy": args.policy or params.policy.model,
        "hh_dev_prompts": len(groups), "hh_start": args.hh_start,
        "p_positive_over_negative": interval(per_prompt_p(rows, "train_rm", "positive", "negative"), seed),
        "p_positive_over_negative_eval_rm": interval(per_prompt_p(rows, "eval_rm", "positive", "negative"), seed),
        "p_chosen_over_rejected": interval(per_prompt_p(rows, "train_rm", "chosen", "rejected"), seed),
        **{f"p_positive_over_negative_{name}": interval(per_prompt_p(rows, name, "positive", "negative"), seed)
           for name in extra_rms},
        **{f"p_chosen_over_rejected_{name}": interval(per_prompt_p(rows, name, "chosen", "rejected"), seed)
           for name in extra_rms},
        "by_origin": by_origin,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))
    path = Path(args.results) if args.results else out / "steering_separation" / "results.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(result) + "\n")
    with (path.parent / f"{args.name}-samples.jsonl").open("w") as fh:
        for r in rows:
            fh.write(json.dumps({k: r[k] for k in ("prompt_id", "origin", "response", "train_rm", "eval_rm", *extra_rms)})
                     + "\n")


if __name__ == "__main__":
    main()
