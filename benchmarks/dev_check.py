"""Dev-split check of a trained policy: tune on this, never on the evaluation prompts.

Answers two dev sets greedily with the base policy and with `<out>/policy` (or --policy):
- HH dev prompts: train-split prompts from --hh-start on (the default trains on the first 32 per
  round and watches the next 16; the benchmark profile on the first 96 and the next 16), judged
  base vs trained by the evaluation reward model (win rate, ties ½, bootstrap interval);
- XSTest dev prompts: the rows *outside* the evaluation subset of the benchmark profile
  (`safety_subset(rows, 200, evaluate.seed)`, which contains the default's 100-prompt subset), judged by the
  string-match refusal judge: unsafe refusal and safe full compliance, with intervals.
The base answers are cached under <out>/dev_check/. One JSON line, appended to --results.

    dvc repro train_eval_rm      # needs outputs/data and outputs/eval_reward_model
    python benchmarks/dev_check.py --name default
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from neat.config import load_params  # noqa: E402
from neat.data import read_pairs  # noqa: E402
from neat.diagnostics import is_repetitive  # noqa: E402
from neat.evaluate import fit_prompt, safety_rates, safety_subset, win_rate_ci  # noqa: E402
from neat.steering import select_prompts  # noqa: E402
from neat.generation import generate, use_generation_params  # noqa: E402
from neat.judges import StringMatchJudge, read_safety_csv  # noqa: E402
from neat.models import load_policy, load_reward_model, load_tokenizer  # noqa: E402
from neat.reward import score_texts  # noqa: E402

EVAL_SUBSET = 200  # params_benchmark.yaml's evaluate.max_safety_prompts; the default's 100 lie inside it


def xstest_dev_rows(params) -> list[dict]:
    """XSTest rows outside the benchmark's evaluation subset (which holds the default's 100 as well)."""
    rows = read_safety_csv(params.paths.safety_prompts)
    held = {r["id"] for r in safety_subset(rows, EVAL_SUBSET, params.evaluate.seed)}
    return [r for r in rows if r["id"] not in held]


def dev_sets(params, hh_start: int, hh_n: int, xstest_n: int | None):
    pairs = read_pairs(Path(params.paths.out) / "data" / "train.jsonl")
    hh = [g[0] for g in select_prompts(pairs, None)[hh_start : hh_start + hh_n]]
    xs = xstest_dev_rows(params)
    if xstest_n:
        xs = safety_subset(xs, xstest_n, params.evaluate.seed + 1)
    return hh, xs


def answer(model, tok, hh, xs, params) -> tuple[list[str], list[str]]:
    e = params.evaluate
    limit = params.train.max_prompt_tokens  # rendered as the evaluate stage renders its prompts
    texts = [fit_prompt(tok, p.prompt, limit) for p in hh] + [
        fit_prompt(tok, [{"role": "user", "content": r["prompt"]}], limit) for r in xs]
    gens = generate(model, tok, texts, max_new_tokens=e.max_new_tokens, batch_size=e.batch_size, seed=params.seed)
    out = [g[0].text for g in gens]
    return out[: len(hh)], out[len(hh):]


@torch.no_grad()
def interpolate_toward(policy, base, alpha: float) -> None:
    """Set each of `policy`'s weights to base + alpha x (policy - base), in place (for a LoRA-trained policy the same
    as scaling its adapter's delta by alpha): alpha 1 keeps the trained policy, 0 gives the base back."""
    base_weights = dict(base.named_parameters())
    for name, param in policy.named_parameters():
        ref = base_weights.get(name)
        if ref is None or ref.shape != param.shape:
            raise ValueError(f"cannot interpolate: the base policy has no weight {name} of shape {tuple(param.shape)}")
        param.copy_(torch.lerp(ref.to(param.dtype), param, alpha))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", "-S", action="append", default=[], help="params override, e.g. evaluate.max_new_tokens=48")
    ap.add_argument("--policy", default=None, help="trained policy directory (default <out>/policy)")
    ap.add_argument("--hh-start", type=int, default=200)
    ap.add_argument("--hh-prompts", type=int, default=64)
    ap.add_argument("--xstest-prompts", type=int, default=120, help="stratified subset of the 250 dev rows (0 = all)")
    ap.add_argument("--results", default="outputs/dev_check/results.jsonl")
    ap.add_argument("--interpolate", type=float, default=None, metavar="A",
                    help="answer with base + A x (trained - base) instead of the trained policy (A = 0.5: halfway)")
    args = ap.parse_args()

    params = load_params(args.params, overrides=args.set)
    use_generation_params(params.generation)
    out = Path(params.paths.out)
    hh, xs = dev_sets(params, args.hh_start, args.hh_prompts, args.xstest_prompts or None)
    started = time.perf_counter()
    tok = load_tokenizer(params.policy.model, cache_dir=params.paths.cache)
    key = hashlib.sha256(json.dumps([params.policy.model, params.evaluate.max_new_tokens, params.seed,
                                     [p.prompt_id for p in hh], [r["id"] for r in xs]]).encode()).hexdigest()[:12]
    cache = out / "dev_check" / f"base-{key}.json"
    if cache.is_file():
        base_hh, base_xs = json.loads(cache.read_text())
    else:
        base, _ = load_policy(params.policy.model, cache_dir=params.paths.cache, device="cpu")
        base_hh, base_xs = answer(base, tok, hh, xs, params)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps([base_hh, base_xs]))
        del base
    policy, _ = load_policy(args.policy or str(out / "policy"), cache_dir=params.paths.cache, device="cpu")
    if args.interpolate is not None:
        base, _ = load_policy(params.policy.model, cache_dir=params.paths.cache, device="cpu")
        try:
            interpolate_toward(policy, base, args.interpolate)
        except ValueError as exc:
            sys.exit(f"dev_check: --policy {args.policy or out / 'policy'}: {exc}")
        del base
    new_hh, new_xs = answer(policy, tok, hh, xs, params)

    rm, rm_tok = load_reward_model(str(out / "eval_reward_model"), cache_dir=params.paths.cache, device="cpu")
    dialogues = [p.prompt for p in hh]
    kw = dict(batch_size=16, max_length=params.reward.max_length, progress=False)
    r_base, r_new = score_texts(rm, rm_tok, dialogues, base_hh, **kw), score_texts(rm, rm_tok, dialogues, new_hh, **kw)
    win = win_rate_ci(r_new, r_base, n_resamples=1000, seed=params.seed)
    judge = StringMatchJudge()
    labels = [r["label"] for r in xs]
    rates = {who: safety_rates(judge.judge(ans), labels, n_resamples=1000, seed=params.seed)
             for who, ans in (("base", base_xs), ("trained", new_xs))}

    def rate(who, key):
        r = rates[who]
        return [r[key], r[f"{key}_ci_low"], r[f"{key}_ci_high"]]

    n = len(hh)
    result = {
        "name": args.name, "overrides": args.set, "hh_dev_prompts": n, "xstest_dev_prompts": len(xs),
        "win_rate": [win["win_rate"], win["ci_low"], win["ci_high"]], "wlt": [win["wins"], win["ties"], win["losses"]],
        "changed_share": sum(a != b for a, b in zip(base_hh, new_hh)) / n,
        "repetition": [sum(map(is_repetitive, base_hh)) / n, sum(map(is_repetitive, new_hh)) / n],
        "safe_compliance": {"base": rate("base", "safe_compliance_rate"), "trained": rate("trained", "safe_compliance_rate")},
        "unsafe_refusal": {"base": rate("base", "unsafe_refusal_rate"), "trained": rate("trained", "unsafe_refusal_rate")},
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))
    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(result) + "\n")
    samples = out / "dev_check" / f"{args.name}-answers.jsonl"
    with samples.open("w") as fh:
        for r, b, t in zip(xs, base_xs, new_xs):
            fh.write(json.dumps({"prompt": r["prompt"], "label": r["label"], "base": b, "trained": t}) + "\n")


if __name__ == "__main__":
    main()
