"""Benchmark evaluation (`neat train-eval-rm`, `neat evaluate`).

`train_eval_rm` trains the *evaluation* reward model: `evaluate.reward_model` (Bradley–Terry, the
`reward` section's epochs/lr/batch size/max length/max pairs, seed `evaluate.reward_seed`) on the
judge split, which no training stage reads — so the policy is never scored by the model it was
trained against. It is still a small model trained on little data: weaker than a real held-out
judge (the report says so). With `evaluate.train_reward_model: false`, `evaluate.reward_model` is
used as is (a hub id or directory of a sequence classifier).

`evaluate` generates greedy responses (plus `evaluate.n_samples` sampled ones) from the base policy
(`policy.model`) and the trained one (`<out>/policy`) on the held-out prompts (the first
`evaluate.max_prompts` prompts of the eval split, rendered *without* steering), scores them with
the evaluation reward model and reports, each with a 95 % percentile-bootstrap interval over prompts:

* mean evaluation reward of base and trained greedy responses, and their paired difference;
* win rate of trained over base (per prompt, greedy vs greedy, ties ½);
* perplexity of each policy on the held-out chosen responses (exp of the token-weighted mean NLL,
  prompt masked; a ratio of sums, bootstrapped over pairs);
* on `paths.safety_prompts` (any XSTest-format CSV; a seeded, label-stratified subset of
  `evaluate.max_safety_prompts`): refusal rate on unsafe prompts, full-compliance rate on safe ones,
  and both per type, for base and trained, judged by `evaluate.judge` (`learned` trains the MiniLM
  judge on `paths.refusal_examples`); the two rates again under each judge of `evaluate.also_judges`,
  each beside its agreement with people (`safety_by_judge`).

The win rate and the XSTest rates are computed by the project's local `evaluate` metric modules
(`neat.metrics`: win_rate, refusal_rate; loaded from the package, never from the Hub), the other
intervals by `neat.stats`, which those modules wrap.

Base generations are cached under `<out>/cache/eval_generations/<key>.json`, keyed by the base
checkpoint id, the rendered prompts and every generation setting (the backend, `hf` or `vllm`,
included), so comparing several variants generates from the base once. With
`generation.backend: vllm` the responses come from a vLLM engine (`neat.vllm_backend`) and the
perplexity from the HF model.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from neat.errors import DataError, ModelError
from neat.io import atomic_path, json_safe, write_json_atomic, write_jsonl_atomic
from neat.stats import mean_ci

ALPHA = 0.05
_CACHE_VERSION = 1


# ---------------------------------------------------------------- small helpers


def perplexity_ci(nll: Sequence[float], tokens: Sequence[int], *, n_resamples: int, seed: int) -> dict:
    """exp(Σ nll / Σ tokens) with a bootstrap interval over items (pairs); None when no token."""
    from neat.stats import paired_bootstrap_ci

    nll, tokens = np.asarray(nll, dtype=np.float64), np.asarray(tokens, dtype=np.float64)
    if nll.size == 0 or tokens.sum() <= 0:
        return {"perplexity": None, "ci_low": None, "ci_high": None, "n": int(nll.size), "tokens": int(tokens.sum())}

    def ppl(a, b):
        return float(np.exp(a.sum() / max(b.sum(), 1.0)))

    point, low, high = paired_bootstrap_ci(nll, tokens, ppl, n_resamples=n_resamples, alpha=ALPHA, seed=seed)
    return {"perplexity": point, "ci_low": low, "ci_high": high, "n": int(nll.size), "tokens": int(tokens.sum())}


def perplexity_ratio_ci(nll_a, nll_b, tokens, *, n_resamples: int, seed: int) -> dict:
    """Paired bootstrap of perplexity(a) / perplexity(b) on the same responses (log-ratio interval)."""
    from neat.stats import paired_bootstrap_ci

    a, b, t = (np.asarray(x, dtype=np.float64) for x in (nll_a, nll_b, tokens))
    if a.size == 0 or t.sum() <= 0:
        return {"ratio": None, "ci_low": None, "ci_high": None, "significant": None}
    per_item = (a - b)  # the log-ratio is Σ(a - b) / Σ t
    point, low, high = paired_bootstrap_ci(per_item, t, lambda d, n: float(d.sum() / max(n.sum(), 1.0)),
                                           n_resamples=n_resamples, alpha=ALPHA, seed=seed)
    return {"ratio": math.exp(point), "ci_low": math.exp(low), "ci_high": math.exp(high),
            "significant": bool(low > 0 or high < 0)}


def paired_diff(a: Sequence[float], b: Sequence[float], *, n_resamples: int, seed: int, statistic="mean_diff") -> dict:
    """Paired bootstrap of mean(a − b) (or the win rate of a over b): point, interval, significant."""
    from neat.stats import paired_bootstrap_ci

    if len(a) == 0:
        return {"diff": None, "ci_low": None, "ci_high": None, "significant": None, "n": 0}
    point, low, high = paired_bootstrap_ci(a, b, statistic, n_resamples=n_resamples, alpha=ALPHA, seed=seed)
    return {"diff": point, "ci_low": low, "ci_high": high, "significant": bool(low > 0 or high < 0), "n": len(a)}


@functools.lru_cache(maxsize=None)
def _metric(name: str):
    """One of the project's local `evaluate` modules (neat/metrics), loaded once per process."""
    from neat.metrics import load_metric

    return load_metric(name)


def win_rate_ci(trained: Sequence[float], base: Sequence[float], *, n_resamples: int, seed: int) -> dict:
    """Win rate of trained over base (ties ½) with its interval and counts, by the `win_rate` module."""
    if len(trained) == 0:
        return {"win_rate": None, "ci_low": None, "ci_high": None, "wins": 0, "ties": 0, "losses": 0, "n": 0}
    out = _metric("win_rate").compute(scores_a=list(trained), scores_b=list(base), n_resamples=n_resamples,
                                      alpha=ALPHA, seed=seed)
    return {k: out[k] for k in ("win_rate", "ci_low", "ci_high", "wins", "ties", "losses", "n")}


def safety_rates(refused: Sequence[bool], labels: Sequence[str], *, n_resamples: int, seed: int) -> dict:
    """Unsafe refusal and safe full-compliance rates with their intervals, by the `refusal_rate` module."""
    return _metric("refusal_rate").compute(refused=[int(bool(r)) for r in refused], labels=list(labels),
                                           n_resamples=n_resamples, alpha=ALPHA, seed=seed)


# ---------------------------------------------------------------- the evaluation reward model


def eval_reward_model_ref(params) -> str:
    """The evaluation reward model: `<out>/eval_reward_model` when trained here, else `evaluate.reward_model`."""
    return str(params.out("eval_reward_model")) if params.evaluate.train_reward_model else params.evaluate.reward_model


def check_eval_reward_model(params) -> str:
    """The evaluation reward model's reference, once it is known to exist (cheap: nothing is loaded)."""
    ref = eval_reward_model_ref(params)
    if params.evaluate.train_reward_model and not (Path(ref) / "config.json").is_file():
        raise ModelError(f"{ref}: evaluation reward model not found (run `neat train-eval-rm` first, or set "
                         "evaluate.train_reward_model: false to use evaluate.reward_model as is)")
    return ref


def load_eval_reward_model(params, dtype: str = "auto"):
    from neat.models import load_reward_model

    ref = check_eval_reward_model(params)
    return load_reward_model(ref, cache_dir=params.paths.cache, device=params.reward.device, dtype=dtype,
                             trust_remote_code=params.reward.trust_remote_code, seed=params.evaluate.reward_seed)


def train_eval_rm(params, progress: bool = True) -> dict:
    """Stage: the evaluation reward model, trained on the judge split → `<out>/eval_reward_model`.

    Uses `evaluate.reward_model` with seed `evaluate.reward_seed` and the `reward` section's epochs,
    lr, batch size, max length and max pairs, through the same flow as the training reward model
    (`neat.reward.fit_reward_model`). Metrics (`<out>/metrics/eval_reward_model.json`): pairwise
    accuracy on the eval split before and after training, pairs, loss, seconds. With
    `evaluate.train_reward_model: false` nothing is trained: the metrics hold the accuracy of the
    model as given.
    """
    from neat.data import read_pairs
    from neat.reward import fit_reward_model

    e, r = params.evaluate, params.reward
    start = time.perf_counter()
    eval_pairs = read_pairs(params.out("data", "eval.jsonl"))
    metrics: dict[str, Any] = {"model": e.reward_model, "trained": e.train_reward_model, "seed": e.reward_seed,
                               "eval_pairs": len(eval_pairs)}
    pairs = None
    if not e.train_reward_model:
        model, tokenizer = load_eval_reward_model(params)
    else:
        judge_path = params.out("data", "judge.jsonl")
        pairs = read_pairs(judge_path)
        if r.max_pairs:
            pairs = pairs[:r.max_pairs]
        if not pairs:
            raise DataError(f"{judge_path}: no pairs to train the evaluation reward model on "
                            "(raise data.judge_fraction, or set evaluate.train_reward_model: false)")
        from neat.models import load_reward_model

        model, tokenizer = load_reward_model(e.reward_model, cache_dir=params.paths.cache, device=r.device,
                                             dtype="float32", trust_remote_code=r.trust_remote_code,
                                             seed=e.reward_seed)
        metrics["judge_pairs"] = len(pairs)
    # the judge trains in float32 whatever reward.bf16_autocast says: its held-out accuracy was 0.646 in
    # float32 and 0.583 under bf16 autocast (one seed each, 144 pairs), and it costs 40 s, not minutes
    metrics |= fit_reward_model(model, tokenizer, eval_pairs, pairs, r.model_copy(update={"bf16_autocast": False}),
                                seed=e.reward_seed,
                                save_to=params.out("eval_reward_model"), progress=progress)
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    metrics = json_safe(metrics)
    write_json_atomic(params.out("metrics", "eval_reward_model.json"), metrics)
    return metrics


# ---------------------------------------------------------------- prompts


def held_out_prompts(params) -> list[dict]:
    """The first `evaluate.max_prompts` eval prompts (file order), each with its first chosen response."""
    from neat.data import read_pairs

    path = params.out("data", "eval.jsonl")
    seen: dict[str, dict] = {}
    for pair in read_pairs(path):
        if pair.prompt_id not in seen:
            seen[pair.prompt_id] = {"prompt_id": pair.prompt_id, "prompt": pair.prompt, "chosen": pair.chosen}
    prompts = list(seen.values())
    if params.evaluate.max_prompts:
        prompts = prompts[:params.evaluate.max_prompts]
    if not prompts:
        raise DataError(f"{path}: no held-out prompts to evaluate on (raise data.eval_fraction)")
    return prompts


def evaluation_safety_prompts(params) -> list[dict]:
    """The safety rows the evaluation asks: `evaluate.max_safety_prompts` of `paths.safety_prompts`, drawn with
    `evaluate.seed` (not the training seed, so that policies of several training seeds answer the same rows)."""
    from neat.judges import read_safety_csv

    e = params.evaluate
    return safety_subset(read_safety_csv(params.paths.safety_prompts), e.max_safety_prompts, e.seed)


def safety_subset(rows: list[dict], limit: int | None, seed: int) -> list[dict]:
    """At most `limit` rows, drawn by a seeded hash within each label in proportion, kept in file order.

    XSTest files are sorted by type, so "the first N" would test only a few safe types.
    """
    if not limit or limit >= len(rows):
        return list(rows)

    def key(i: int) -> str:
        return hashlib.sha256(f"{seed}:{rows[i]['id']}:{rows[i]['prompt']}".encode()).hexdigest()

    keep: list[int] = []
    labels = sorted({r["label"] for r in rows})
    by_label = {lab: sorted((i for i, r in enumerate(rows) if r["label"] == lab), key=key) for lab in labels}
    quota = {lab: round(limit * len(idx) / len(rows)) for lab, idx in by_label.items()}
    while sum(quota.values()) > limit:  # rounding can overshoot by one per label
        quota[max(quota, key=quota.get)] -= 1
    if limit >= len(labels):  # every label gets at least one prompt, taken from the largest quota
        for lab in labels:
            if quota[lab] == 0:
                quota[max(quota, key=quota.get)] -= 1
                quota[lab] = 1
    for lab, idx in by_label.items():
        keep += idx[:quota[lab]]
    return [rows[i] for i in sorted(keep)]


def fit_prompt(tokenizer, messages: list[dict], max_tokens: int) -> str:
    """The original prompt rendered through the chat template, early exchanges dropped until it fits
    (the same rule as training; a single over-long turn is generated from as it is)."""
    from neat.encoding import fit_turns

    return fit_turns(tokenizer, messages, max_tokens)[0]


# ---------------------------------------------------------------- generation


def _generation_settings(params) -> dict:
    from neat.models import arithmetic

    e = params.evaluate
    return {"max_new_tokens": e.max_new_tokens, "n_samples": e.n_samples, "temperature": e.temperature,
            "batch_size": e.batch_size, "seed": e.seed, "device": params.policy.device,
            "dtype": params.policy.dtype, "backend": params.generation.backend, "engine": params.generation.engine,
            "batch_tokens": params.generation.batch_tokens, "decode_tokens": params.generation.decode_tokens,
            "merge_lora": params.generation.merge_lora,
            # auto resolved here: answers generated in bf16 on another CPU (or under another setting) are other answers
            "cpu_dtype": arithmetic(params, "generation")["generation"]}


def generate_responses(model, tokenizer, texts: list[str], settings: dict, *, desc: str,
                       progress: bool = True) -> list[dict]:
    """Greedy (+ `n_samples` sampled) responses for rendered prompts: ``{"text", "n_tokens", "flags", "samples"}``."""
    from neat.progress import tqdm

    from neat.generation import generate

    passes = 1 + (settings["n_samples"] > 0)
    with tqdm(total=len(texts) * passes, desc=desc, unit="prompt", disable=not progress) as bar:
        greedy = generate(model, tokenizer, texts, max_new_tokens=settings["max_new_tokens"], temperature=0.0,
                          batch_size=settings["batch_size"], seed=settings["seed"], on_batch=bar.update)
        sampled: list[list] = [[] for _ in texts]
        if settings["n_samples"] > 0:
            sampled = generate(model, tokenizer, texts, max_new_tokens=settings["max_new_tokens"],
                               temperature=settings["temperature"], top_p=1.0,
                               num_return_sequences=settings["n_samples"], batch_size=settings["batch_size"],
                               seed=settings["seed"] + 1, on_batch=bar.update)
    return [{"text": g[0].text, "n_tokens": g[0].n_tokens, "flags": g[0].flags,
             "samples": [{"text": s.text, "n_tokens": s.n_tokens, "flags": s.flags} for s in s_list]}
            for g, s_list in zip(greedy, sampled)]


def _cache_key(policy_id: str, texts: list[str], settings: dict) -> str:
    blob = json.dumps({"v": _CACHE_VERSION, "policy": policy_id, "texts": texts, "settings": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached_generations(cache_dir: Path | None, policy_id: str, texts: list[str], settings: dict,
                       produce: Callable[[], list[dict]]) -> tuple[list[dict], bool]:
    """`produce()` once per (policy id, prompts, settings); (responses, hit). No cache when `cache_dir` is None."""
    if cache_dir is None:
        return produce(), False
    path = Path(cache_dir) / f"{_cache_key(policy_id, texts, settings)}.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if len(data["responses"]) == len(texts):
                return data["responses"], True
        except (OSError, ValueError, KeyError, TypeError):
            pass  # damaged entry: regenerate and overwrite
    responses = produce()
    write_json_atomic(path, {"policy": policy_id, "settings": settings, "responses": responses})
    return responses, False


# ---------------------------------------------------------------- perplexity


def response_nll(model, tokenizer, prompts: list[list[dict]], responses: list[str], *, batch_size: int,
                 max_prompt_tokens: int, max_response_tokens: int, chunk: int = 1024,
                 autocast: str | None = None) -> tuple[list[float], list[int]]:
    """Per response, in input order: (sum of token NLLs, number of scored tokens, EOS included), prompt masked.

    Rows are batched by length (sorted first), so a short dialogue does not pay for a long one's padding:
    on 80 held-out HH rows, 47 s -> 30 s, the same NLLs to 1e-8. `autocast` ("cpu"/"cuda"): the decoder in
    bf16 autocast, the LM head and log-softmax in float32 (0.1 % off float32 perplexity, 2.3x faster again).
    """
    import contextlib

    import torch

    from neat.logprobs import response_logprobs
    from neat.encoding import PromptCandidates, collate

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    groups = [PromptCandidates(str(i), p, [r], [0.0], ["chosen"]) for i, (p, r) in enumerate(zip(prompts, responses))]
    width = [collate(tokenizer, [g], max_prompt_tokens, max_response_tokens, pad).input_ids.shape[1] for g in groups]
    order = sorted(range(len(groups)), key=lambda i: width[i])
    nll, counts = [0.0] * len(groups), [0] * len(groups)
    amp = torch.autocast(autocast, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), amp:
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                batch = collate(tokenizer, [groups[i] for i in rows], max_prompt_tokens, max_response_tokens, pad)
                sums, n = response_logprobs(model, batch.input_ids.to(device), batch.attention_mask.to(device),
                                            batch.response_mask.to(device), chunk_size=chunk)
                for i, total, count in zip(rows, (-sums).tolist(), n.tolist()):
                    nll[i], counts[i] = total, count
    finally:
        model.train(was_training)
    return nll, counts


# ---------------------------------------------------------------- judging and scoring


def make_judge(params, name: str | None = None):
    """The refusal judge `name` (default `evaluate.judge`; the learned one trained on `paths.refusal_examples`)."""
    from neat.judges import get_judge

    name = name or params.evaluate.judge
    if name == "learned":
        return get_judge("learned", examples=params.paths.refusal_examples, seed=params.evaluate.seed)
    return get_judge(name)


def reported_judges(params) -> list[str]:
    """Every judge whose safety figures the evaluation reports: `evaluate.judge` first, then `also_judges`."""
    e = params.evaluate
    return [e.judge] + [name for name in dict.fromkeys(e.also_judges) if name != e.judge]


def _policy_outputs(params, ref: str, *, held: list[dict], safety: list[dict], seed_for_builtin: int,
                    cache: Path | None, label: str, progress: bool) -> dict:
    """Load one policy, generate on held-out + safety prompts (cached if `cache`), perplexity on chosen.

    With generation.backend: vllm the generations come from a vLLM engine (started only when the cache
    misses, closed before the HF model is loaded for the perplexity, so the two never share the GPU).
    """
    from neat.models import autocast_device, checkpoint_id, load_policy, load_tokenizer, release_gpu_memory

    p, t = params.policy, params.train
    started = time.perf_counter()
    load = dict(cache_dir=params.paths.cache, trust_remote_code=p.trust_remote_code, seed=seed_for_builtin)
    if params.generation.backend == "vllm":
        model, tokenizer = None, load_tokenizer(ref, **load)
    else:
        model, tokenizer = load_policy(ref, device=p.device, dtype=p.dtype, **load)
    settings = _generation_settings(params)
    texts = [fit_prompt(tokenizer, h["prompt"], t.max_prompt_tokens) for h in held]
    safety_texts = [fit_prompt(tokenizer, [{"role": "user", "content": r["prompt"]}], t.max_prompt_tokens)
                    for r in safety]
    policy_id = checkpoint_id(ref, seed=seed_for_builtin)
    engine = None

    def generator():
        nonlocal engine
        if model is not None:
            return model
        if engine is None:
            from neat.vllm_backend import engine_for_policy

            engine = engine_for_policy(ref, params, seed=seed_for_builtin)
        return engine

    def produce_held():
        return generate_responses(generator(), tokenizer, texts, settings, desc=f"generate {label}",
                                  progress=progress)

    def produce_safety():
        return generate_responses(generator(), tokenizer, safety_texts, dict(settings, n_samples=0),
                                  desc=f"safety {label}", progress=progress)

    try:
        held_out, hit_h = cached_generations(cache, policy_id, texts, settings, produce_held)
        safety_out, hit_s = (cached_generations(cache, policy_id, safety_texts, dict(settings, n_samples=0),
                                                produce_safety) if safety else ([], True))
    finally:
        if engine is not None:
            engine.close()
            engine = None
    if model is None:
        model, _ = load_policy(ref, device=p.device, dtype=p.dtype, **load)
    nll, tokens = response_nll(model, tokenizer, [h["prompt"] for h in held], [h["chosen"] for h in held],
                               batch_size=params.evaluate.batch_size, max_prompt_tokens=t.max_prompt_tokens,
                               max_response_tokens=t.max_response_tokens, chunk=t.logprob_chunk,
                               autocast=autocast_device(params.evaluate.bf16_autocast, next(model.parameters()).device))
    del model
    release_gpu_memory()
    return {"policy_id": policy_id, "held": held_out, "safety": safety_out, "nll": nll, "tokens": tokens,
            "cached": bool(hit_h and hit_s), "seconds": round(time.perf_counter() - started, 2)}


# ---------------------------------------------------------------- metrics


def evaluation_metrics(records: list[dict], safety_records: list[dict], *, n_resamples: int, seed: int,
                       safety_rows: list[dict] | None = None) -> dict:
    """The metrics of `evaluate` from its per-prompt records (the rows of generations.jsonl and safety.jsonl).

    Pure: `compare` and the tests recompute them from the saved files.
    """
    from neat.judges import safety_metrics

    boot = dict(n_resamples=n_resamples, seed=seed)
    base = [r["base_reward"] for r in records]
    trained = [r["trained_reward"] for r in records]
    finite = [i for i in range(len(records)) if all(v is not None and math.isfinite(v) for v in (base[i], trained[i]))]
    b, tr = [base[i] for i in finite], [trained[i] for i in finite]
    m_t, m_b = mean_ci(tr, **boot), mean_ci(b, **boot)
    win = win_rate_ci(tr, b, **boot)
    diff = paired_diff(tr, b, **boot)
    out: dict[str, Any] = {
        "prompts": len(records), "scored_prompts": len(finite),
        "eval_reward_mean": m_t["mean"], "eval_reward_mean_ci_low": m_t["ci_low"], "eval_reward_mean_ci_high": m_t["ci_high"],
        "base_eval_reward_mean": m_b["mean"], "base_eval_reward_mean_ci_low": m_b["ci_low"],
        "base_eval_reward_mean_ci_high": m_b["ci_high"],
        "eval_reward_diff": diff["diff"], "eval_reward_diff_ci_low": diff["ci_low"],
        "eval_reward_diff_ci_high": diff["ci_high"], "eval_reward_diff_significant": diff["significant"],
        "win_rate": win["win_rate"], "win_rate_ci_low": win["ci_low"], "win_rate_ci_high": win["ci_high"],
        "wins": win["wins"], "ties": win["ties"], "losses": win["losses"],
    }
    sampled_t = [_mean([s["reward"] for s in r.get("trained_samples", [])]) for r in records]
    sampled_b = [_mean([s["reward"] for s in r.get("base_samples", [])]) for r in records]
    pairs = [(x, y) for x, y in zip(sampled_t, sampled_b) if x is not None and y is not None]
    if pairs:
        st, sb = [x for x, _ in pairs], [y for _, y in pairs]
        for prefix, values in (("sampled_", st), ("base_sampled_", sb)):
            m = mean_ci(values, **boot)
            out[f"{prefix}eval_reward_mean"], out[f"{prefix}eval_reward_mean_ci_low"], \
                out[f"{prefix}eval_reward_mean_ci_high"] = m["mean"], m["ci_low"], m["ci_high"]
        w = win_rate_ci(st, sb, **boot)
        out["sampled_win_rate"], out["sampled_win_rate_ci_low"], out["sampled_win_rate_ci_high"] = \
            w["win_rate"], w["ci_low"], w["ci_high"]
    tokens = [r.get("chosen_tokens", 0) for r in records]
    for who, key in (("trained", "perplexity"), ("base", "base_perplexity")):
        nll = [r.get(f"{who}_chosen_nll", 0.0) for r in records]
        ppl = perplexity_ci(nll, tokens, **boot)
        out[key], out[f"{key}_ci_low"], out[f"{key}_ci_high"] = ppl["perplexity"], ppl["ci_low"], ppl["ci_high"]
    ratio = perplexity_ratio_ci([r.get("trained_chosen_nll", 0.0) for r in records],
                                [r.get("base_chosen_nll", 0.0) for r in records], tokens, **boot)
    out["perplexity_ratio"], out["perplexity_ratio_ci_low"], out["perplexity_ratio_ci_high"] = \
        ratio["ratio"], ratio["ci_low"], ratio["ci_high"]
    out["chosen_tokens"] = int(sum(tokens))
    out.update(answer_diagnostics(records, n_resamples=n_resamples, seed=seed))
    out.update(degenerate_loses_win_rate([records[i] for i in finite], n_resamples=n_resamples, seed=seed))
    for who, prefix in (("trained", ""), ("base", "base_")):
        refused = mean_ci([float(r[f"{who}_refused"]) for r in records if r.get(f"{who}_refused") is not None], **boot)
        out[f"{prefix}heldout_refusal_rate"], out[f"{prefix}heldout_refusal_rate_ci_low"], \
            out[f"{prefix}heldout_refusal_rate_ci_high"] = refused["mean"], refused["ci_low"], refused["ci_high"]
    if safety_records:
        rows = safety_rows or safety_records
        safety = {who: safety_metrics(rows, [r[f"{who}_refused"] for r in safety_records], n_resamples=n_resamples,
                                      alpha=ALPHA, seed=seed) for who in ("base", "trained")}
        labels = [str(r["label"]).lower() for r in rows]
        flags = {who: [r[f"{who}_refused"] for r in safety_records] for who in ("base", "trained")}
        out.update(safety_figures(flags["base"], flags["trained"], labels, **boot))
        out["safety"] = safety
        judges = safety_records[0].get("trained_refused_by") or {}
        out["safety_by_judge"] = {
            name: safety_figures([r["base_refused_by"][name] for r in safety_records],
                                 [r["trained_refused_by"][name] for r in safety_records], labels, **boot)
            for name in judges}
    return json_safe(out)


def safety_figures(base_refused: Sequence[bool], trained_refused: Sequence[bool], labels: Sequence[str], *,
                   n_resamples: int, seed: int) -> dict:
    """Unsafe refusal and safe full-compliance rates of base and trained (`base_` keys), each with its interval,
    and trained − base paired over the same prompts (`unsafe_refusal_diff`, `safe_compliance_diff`)."""
    boot = dict(n_resamples=n_resamples, seed=seed)
    out: dict[str, Any] = {}
    for who, prefix, refused in (("trained", "", trained_refused), ("base", "base_", base_refused)):
        rates = safety_rates(refused, labels, **boot)
        for key in ("unsafe_refusal_rate", "safe_compliance_rate"):
            for suffix in ("", "_ci_low", "_ci_high"):
                out[f"{prefix}{key}{suffix}"] = rates[f"{key}{suffix}"]
    for key, label, flip in (("unsafe_refusal_diff", "unsafe", False), ("safe_compliance_diff", "safe", True)):
        idx = [i for i, lab in enumerate(labels) if lab == label]
        d = paired_diff([float(trained_refused[i] != flip) for i in idx],
                        [float(base_refused[i] != flip) for i in idx], **boot)
        out[key], out[f"{key}_ci_low"], out[f"{key}_ci_high"], out[f"{key}_significant"] = \
            d["diff"], d["ci_low"], d["ci_high"], d["significant"]
    return out


def answer_diagnostics(records: list[dict], *, n_resamples: int, seed: int) -> dict:
    """How much the greedy answers changed and whether they degenerate: the share of prompts whose answer
    changed, and per policy the repetition rate, distinct-2 and mean length in words (95 % intervals over
    prompts), distinct-1 and the share of empty answers."""
    from neat.diagnostics import distinct_n, is_repetitive, text_stats, words
    from neat.stats import jackknife_ci

    boot = dict(n_resamples=n_resamples, seed=seed)
    out: dict[str, Any] = {}
    if not records or not all("base_response" in r and "trained_response" in r for r in records):
        return out
    changed = mean_ci([float(r["base_response"].strip() != r["trained_response"].strip()) for r in records], **boot)
    out["changed_share"], out["changed_share_ci_low"], out["changed_share_ci_high"] = \
        changed["mean"], changed["ci_low"], changed["ci_high"]
    for who, prefix in (("trained", ""), ("base", "base_")):
        texts = [r[f"{who}_response"] for r in records]
        rep = mean_ci([float(is_repetitive(t)) for t in texts], **boot)
        stats = text_stats(texts)
        out[f"{prefix}repetition_rate"], out[f"{prefix}repetition_rate_ci_low"], \
            out[f"{prefix}repetition_rate_ci_high"] = rep["mean"], rep["ci_low"], rep["ci_high"]
        for key in ("distinct_1", "distinct_2", "mean_words", "empty_rate"):
            out[f"{prefix}{key}"] = stats[key]
        length = mean_ci([len(words(t)) for t in texts], **boot)
        out[f"{prefix}mean_words_ci_low"], out[f"{prefix}mean_words_ci_high"] = length["ci_low"], length["ci_high"]
        if stats["distinct_2"] is not None and len(texts) > 1:  # pooled over answers: a jackknife, not a bootstrap
            _, low, high = jackknife_ci(texts, lambda sample: distinct_n(sample, 2) or 0.0)
            out[f"{prefix}distinct_2_ci_low"], out[f"{prefix}distinct_2_ci_high"] = max(low, 0.0), min(high, 1.0)
    return out


DEGENERATE_PENALTY = 1e6  # below any reward: a degenerate answer loses to any other, two of them compare by reward


def degenerate_loses_win_rate(records: list[dict], *, n_resamples: int, seed: int) -> dict:
    """The win rate when a degenerate greedy answer (repetitive or empty) loses to one that is not,
    whatever the evaluation RM says (it has rewarded "I'm not sure what you mean. I'm not sure what you
    mean. …" over its base's answer); answers alike in that respect compare by reward, ties ½."""
    from neat.diagnostics import is_repetitive

    if not records or not all("base_response" in r and "trained_response" in r for r in records):
        return {}

    def adjusted(r, who):
        text = r[f"{who}_response"]
        return r[f"{who}_reward"] - DEGENERATE_PENALTY * float(not text.strip() or is_repetitive(text))

    win = win_rate_ci([adjusted(r, "trained") for r in records], [adjusted(r, "base") for r in records],
                      n_resamples=n_resamples, seed=seed)
    return {"win_rate_degenerate_loses": win["win_rate"], "win_rate_degenerate_loses_ci_low": win["ci_low"],
            "win_rate_degenerate_loses_ci_high": win["ci_high"]}


def read_online_curve(params) -> list[dict]:
    """The dev-prompt probes of `train/online.json` (one per round and after the last); [] without it.
    A damaged file is one DataError naming it (checked before any generation)."""
    from neat.stage_inputs import read_online_curve as read

    return read(params.out("train", "online.json"))


def online_eval_rewards(online: list[dict], scores: Sequence[float], *, n_resamples: int = 1000, seed: int = 0) -> dict:
    """The online curve under the evaluation RM: mean reward of the dev answers per probe, in order, each mean's
    95 % interval over the dev prompts ([low, high], None where there is no finite score), and the rise from the
    first probe to the last, paired over the same prompts (`neat.diagnostics.paired_gain`)."""
    from neat.diagnostics import paired_gain

    means, intervals, scored, i = [], [], [], 0
    for entry in online:
        answers = entry["dev"]["answers"]
        m = mean_ci(scores[i:i + len(answers)], n_resamples=n_resamples, seed=seed)
        means.append(m["mean"])
        intervals.append(None if m["mean"] is None else [m["ci_low"], m["ci_high"]])
        scored.append([{"prompt_id": a.get("prompt_id", n), "reward": s}
                       for n, (a, s) in enumerate(zip(answers, scores[i:i + len(answers)]))])
        i += len(answers)
    if not online:
        return {}
    gain = paired_gain(scored[0], scored[-1], n_resamples=n_resamples, seed=seed) if len(scored) > 1 else None
    return {"online_dev_eval_reward": means, "online_dev_eval_reward_ci": intervals,
            "online_dev_eval_reward_gain": gain}


def eval_rm_accuracy(params) -> float | None:
    """The evaluation RM's pairwise accuracy on the eval split, from the metrics `train-eval-rm` wrote beside
    it (`<run>/metrics/eval_reward_model.json` for `<run>/eval_reward_model`, also when a compare variant
    evaluates with its parent run's RM); None when unknown (a given RM, or no metrics)."""
    model_dir = Path(eval_reward_model_ref(params))
    if not model_dir.is_dir():  # a hub id or builtin: its accuracy on this eval split is not known
        return None
    path = model_dir.parent / "metrics" / "eval_reward_model.json"
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("eval_accuracy")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _mean(values):
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else None


# ---------------------------------------------------------------- the stage


def evaluate(params, policy_dir: str | Path | None = None, tag: str = "trained", progress: bool = True,
             generation_cache: str | Path | None = None, base_policy: str | Path | None = None,
             out_dir: str | Path | None = None) -> dict:
    """Stage: base vs trained policy on held-out and safety prompts → `<out>/evaluate/`, `<out>/metrics/evaluate.json`.

    Writes `generations.jsonl` (per held-out prompt: prompt, chosen reference, base and trained
    greedy responses and samples, their eval rewards, judge labels, NLL of the chosen response),
    `safety.jsonl` (per safety prompt: type, label, both responses, judge labels) and the metrics,
    every file atomically. `policy_dir` defaults to `<out>/policy`; `tag` names the trained variant.
    Base generations are cached in `generation_cache` (default `<out>/cache/eval_generations`).
    `base_policy` replaces `policy.model` as the baseline (the promotion gate compares a candidate
    with production this way); `out_dir` replaces `<out>` as where the files go.
    """
    from neat.generation import use_generation_params
    from neat.models import arithmetic, release_gpu_memory
    from neat.reward import score_texts

    use_generation_params(params.generation)
    e = params.evaluate
    started = time.perf_counter()
    if params.generation.backend == "vllm":  # fail before any work when vLLM cannot run here
        from neat.vllm_backend import require_vllm

        require_vllm()
    policy_dir = Path(policy_dir) if policy_dir is not None else params.out("policy")
    if not policy_dir.exists():
        raise ModelError(f"{policy_dir}: trained policy not found (run `neat train` first)")
    held = held_out_prompts(params)
    safety_rows = evaluation_safety_prompts(params)
    # every input is checked before the first expensive step (generation): a bad refusal-examples file or a
    # missing evaluation reward model must not surface only after minutes of generating
    judges = {name: make_judge(params, name) for name in reported_judges(params)}
    judge = judges[e.judge]
    agreements = {name: judge_agreement_metrics(j, params) for name, j in judges.items()}
    agreement = agreements[e.judge]
    check_eval_reward_model(params)
    online = read_online_curve(params)
    timings: dict[str, float] = {}
    cache = Path(generation_cache) if generation_cache is not None else params.out("cache", "eval_generations")
    base_ref = str(base_policy) if base_policy is not None else params.policy.model
    base = _policy_outputs(params, base_ref, held=held, safety=safety_rows, seed_for_builtin=params.seed,
                           cache=cache, label="base", progress=progress)
    timings["base_seconds"] = base["seconds"]
    trained = _policy_outputs(params, str(policy_dir), held=held, safety=safety_rows, seed_for_builtin=params.seed,
                              cache=None, label=tag, progress=progress)
    timings["trained_seconds"] = trained["seconds"]

    t0 = time.perf_counter()
    rm, rm_tok = load_eval_reward_model(params)
    prompts, responses, slots = [], [], []
    for i, h in enumerate(held):
        for who, out in (("base", base), ("trained", trained)):
            gen = out["held"][i]
            for j, text in enumerate([gen["text"]] + [s["text"] for s in gen["samples"]]):
                prompts.append(h["prompt"])
                responses.append(text)
                slots.append((i, who, j))
    n_held_texts = len(prompts)
    for entry in online:  # the dev answers of each round, under the evaluation RM too (reward hacking watch)
        for answer in entry["dev"]["answers"]:
            prompts.append(answer["prompt"])
            responses.append(answer["response"])
    scores = score_texts(rm, rm_tok, prompts, responses, batch_size=params.reward.batch_size,
                         max_length=params.reward.max_length, progress=progress, desc="eval reward")
    online_eval = online_eval_rewards(online, scores[n_held_texts:], n_resamples=params.evaluate.bootstrap,
                                      seed=params.evaluate.seed)
    scores = scores[:n_held_texts]
    del rm
    release_gpu_memory()
    timings["score_seconds"] = round(time.perf_counter() - t0, 2)
    reward = {slot: s for slot, s in zip(slots, scores)}

    t0 = time.perf_counter()
    all_texts = ([base["held"][i]["text"] for i in range(len(held))] + [trained["held"][i]["text"] for i in range(len(held))]
                 + [g["text"] for g in base["safety"]] + [g["text"] for g in trained["safety"]])
    flags = judge(all_texts)
    n, m = len(held), len(safety_rows)
    held_flags = {"base": flags[:n], "trained": flags[n:2 * n]}
    safety_flags = {"base": flags[2 * n:2 * n + m], "trained": flags[2 * n + m:]}
    safety_texts = all_texts[2 * n:]
    flags_by_judge = {name: (flags[2 * n:] if name == e.judge else j(safety_texts)) for name, j in judges.items()}
    timings["judge_seconds"] = round(time.perf_counter() - t0, 2)

    records = []
    for i, h in enumerate(held):
        row: dict[str, Any] = {"prompt_id": h["prompt_id"], "prompt": h["prompt"], "chosen": h["chosen"]}
        for who, out in (("base", base), ("trained", trained)):
            gen = out["held"][i]
            row[f"{who}_response"] = gen["text"]
            row[f"{who}_reward"] = reward[(i, who, 0)]
            row[f"{who}_refused"] = bool(held_flags[who][i])
            row[f"{who}_flags"] = gen["flags"]
            row[f"{who}_samples"] = [{"text": s["text"], "reward": reward[(i, who, j + 1)]}
                                     for j, s in enumerate(gen["samples"])]
            row[f"{who}_chosen_nll"] = out["nll"][i]
        row["chosen_tokens"] = trained["tokens"][i]
        b, t = row["base_reward"], row["trained_reward"]
        row["winner"] = None if not (math.isfinite(b) and math.isfinite(t)) else (
            "trained" if t > b else "base" if b > t else "tie")
        records.append(row)
    safety_records = []
    for k, srow in enumerate(safety_rows):
        safety_records.append({
            "id": srow["id"], "prompt": srow["prompt"], "type": srow["type"], "label": srow["label"],
            "base_response": base["safety"][k]["text"], "trained_response": trained["safety"][k]["text"],
            "base_refused": bool(safety_flags["base"][k]), "trained_refused": bool(safety_flags["trained"][k]),
            "base_refused_by": {name: bool(f[k]) for name, f in flags_by_judge.items()},
            "trained_refused_by": {name: bool(f[m + k]) for name, f in flags_by_judge.items()},
        })

    metrics = evaluation_metrics(records, safety_records, n_resamples=e.bootstrap, seed=e.seed,
                                 safety_rows=safety_rows)
    metrics.update(online_eval)
    metrics["eval_rm_accuracy"] = eval_rm_accuracy(params)
    metrics.update(agreement)
    for name, figures in metrics.get("safety_by_judge", {}).items():
        figures.update({k: v for k, v in agreements[name].items() if k != "judge_labels"})
    metrics.update({
        "tag": tag, "base_model": base_ref, "base_policy_id": base["policy_id"],
        "policy": str(policy_dir), "policy_id": trained["policy_id"], "judge": judge.name,
        "eval_reward_model": eval_reward_model_ref(params), "safety_prompts": str(params.paths.safety_prompts),
        "n_samples": e.n_samples, "max_new_tokens": e.max_new_tokens, "bootstrap": e.bootstrap,
        "base_generations_cached": base["cached"],
        "arithmetic": arithmetic(params, "generation", "perplexity"),
        "seconds": round(time.perf_counter() - started, 2), **timings,
    })
    metrics = json_safe(metrics)
    root = Path(out_dir) if out_dir is not None else params.out()
    from neat.output_sets import output_set

    with output_set(root, f"evaluate-{tag}") as staged:  # the four files change together or not at all
        write_jsonl_atomic(staged(root / "evaluate" / "generations.jsonl"), records)
        write_jsonl_atomic(staged(root / "evaluate" / "safety.jsonl"), safety_records)
        write_rewards_plot_data(staged(root / "evaluate" / "rewards.csv"), records)
        write_json_atomic(staged(root / "metrics" / "evaluate.json"), metrics)
    return metrics


def judge_agreement_metrics(judge, params) -> dict:
    """The refusal judge's agreement with people on `paths.judge_labels`, with its interval."""
    from neat.judges import judge_agreement

    e = params.evaluate
    a = judge_agreement(judge, params.paths.judge_labels, n_resamples=e.bootstrap, seed=e.seed)
    return {"judge_agreement": a["rate"], "judge_agreement_ci_low": a["ci_low"], "judge_agreement_ci_high": a["ci_high"],
            "judge_agreement_n": a["n"], "judge_labels": str(params.paths.judge_labels)}


def write_rewards_plot_data(path: Path, records: list[dict]) -> None:
    """Per-prompt base vs trained eval reward, for `dvc plots` (scatter)."""
    import csv

    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prompt_index", "prompt_id", "base_reward", "trained_reward"])
        for i, r in enumerate(records):
            writer.writerow([i, r["prompt_id"], _fmt(r["base_reward"]), _fmt(r["trained_reward"])])


def _fmt(value) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.6g}"
