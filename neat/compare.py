"""Compare trained variants against the same base on the same prompts (`neat compare`).

Variants (`VARIANTS`), each trained from the same base policy with the same prompts, the same
training reward model and the same number of optimizer steps:

* ``neat`` — the params as given (positive *and* negative steered samples; `expand.k_neg` is set to 2
  if the params have 0);
* ``rrhf`` — the online-RRHF ablation: `expand.k_neg: 0`, everything else equal;
* ``sft`` — supervised fine-tuning on the dataset's chosen responses only: one candidate per prompt
  (so the ranking term is 0 and the loss is the SFT term), `train.rounds: 1` with
  `epochs_per_round` multiplied by the rounds, hence the same optimizer steps and lr schedule;
* ``neat_pro`` — ``neat`` with the PRO loss (`train.loss: pro`);
* ``dpo`` — offline DPO on the dataset's chosen/rejected responses only, chosen above rejected by the
  human label (`train.pair_labels: origin`); no sampling, one round with the epochs multiplied as for
  ``sft``;
* ``online_dpo`` — ``neat``'s candidates (sampled, scored, every round), DPO on each prompt's
  best-vs-worst pair by reward;
* ``rlcd`` — DPO on (positive-steered, negative-steered) pairs labelled by their origin
  (`train.pair_labels: origin`), without the dataset's responses; the reward model still scores the
  candidates (for the logs) but does not label the pairs.

The DPO variants train on DPO alone (`train.rank_weight: 1`, `sft_weight: 0`, `anchor_weight: 0`: β,
`train.dpo_beta`, is their KL term) against the reference policy, the base with its LoRA adapters off,
so they need `policy.lora.enabled`.

Each variant runs the manifest's stages (neat/stages.py) after the shared ones — `expand`, `score`,
`train`, then `evaluate` — with a deep copy of
the params whose `paths.out` is `<out>/compare/<name>`; the prepared data is copied there, and the
training and evaluation reward models of `<out>` are used as given (`reward.train: false`,
`evaluate.train_reward_model: false`), so they are trained once. Missing upstream outputs
(prepared data, reward models) are produced first. A variant whose inputs and params are unchanged
since its last run (`variant.json`) is not retrained. Base generations are cached once for all.

Outputs: `<out>/compare/table.md` (markdown), `<out>/compare/compare.json` (everything) and
`<out>/metrics/compare.json` (flat, for `dvc metrics`). Differences against the reference variant
(``neat``) come from a paired bootstrap over the same prompts; a difference whose 95 % interval
contains 0 is reported as *inside* (not distinguishable at this sample size).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from neat.errors import ConfigError, DataError
from neat.formatting import format_interval
from neat.io import file_digest, read_jsonl, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

VARIANTS: dict[str, str] = {
    "neat": "NEAT: positive and negative steered samples + dataset responses, ranking loss + SFT",
    "rrhf": "online RRHF ablation (expand.k_neg = 0)",
    "sft": "SFT on the dataset's chosen responses, same optimizer steps",
    "neat_pro": "NEAT with the PRO loss (train.loss = pro)",
    "dpo": "offline DPO on the dataset's chosen/rejected pairs (human label), no sampling, same optimizer steps",
    "online_dpo": "DPO on the best-vs-worst pair by reward of NEAT's scored candidates, every round",
    "rlcd": "DPO on positive- vs negative-steered samples labelled by origin (no dataset responses, RM not used)",
}
DEFAULT_VARIANTS = ("neat", "rrhf", "sft")
# trained on the dataset's responses only (no expand, no score): rows written by `dataset_rows`
DATASET_ONLY = ("sft", "dpo")
DPO_VARIANTS = ("dpo", "online_dpo", "rlcd")


def variant_params(params, name: str, root: Path):
    """A deep copy of `params` for variant `name`, writing under `root/name`, sharing the reward models."""
    from neat.evaluate import eval_reward_model_ref
    from neat.reward import reward_model_ref

    if name not in VARIANTS:
        raise ConfigError(f"unknown variant '{name}'; choose from {', '.join(VARIANTS)}")
    v = params.model_copy(deep=True)
    v.paths.out = str(Path(root) / name)
    v.reward.model, v.reward.train = reward_model_ref(params), False
    v.evaluate.reward_model, v.evaluate.train_reward_model = eval_reward_model_ref(params), False
    if name in DPO_VARIANTS and not params.policy.lora.enabled:
        raise ConfigError(f"variant '{name}' trains with DPO, whose reference policy is the base with its LoRA "
                          "adapters off: set policy.lora.enabled: true (or leave the variant out)")
    if name in ("neat", "neat_pro", "online_dpo", "rlcd"):
        v.expand.k_neg = v.expand.k_neg or 2
    if name == "rrhf":
        v.expand.k_neg = 0
    if name in DATASET_ONLY:  # no sampling: one round over the dataset rows, as many optimizer steps
        v.expand.k_pos = v.expand.k_neg = 0
        v.train.epochs_per_round = params.train.epochs_per_round * params.train.rounds
        v.train.rounds = 1
    if name == "sft":
        v.train.sft_weight = v.train.sft_weight or 1.0
    if name == "neat_pro":
        v.train.loss = "pro"
    if name in DPO_VARIANTS:
        v.train.loss = "dpo"
        v.train.rank_weight, v.train.sft_weight, v.train.anchor_weight = 1.0, 0.0, 0.0
    if name in ("dpo", "rlcd"):
        v.train.pair_labels = "origin"
    if name == "rlcd":
        v.expand.k_pos = v.expand.k_pos or 2
        v.train.include_dataset_responses = False
    return v


def sft_rows(params) -> list[dict]:
    """Scored rows holding only the dataset's chosen responses (reward 0, rank 0) for the training prompts."""
    return dataset_rows(params, "sft")


def dataset_rows(params, name: str) -> list[dict]:
    """Scored rows of the dataset's responses for the training prompts: `sft` the chosen ones only
    (reward 0, rank 0); `dpo` chosen (reward 1, rank 0) and rejected (reward 0, rank 1), the human label."""
    from neat.data import read_pairs
    from neat.steering import candidate_rows_from_dataset, select_prompts

    origins = {"sft": {"chosen": (0.0, 0)}, "dpo": {"chosen": (1.0, 0), "rejected": (0.0, 1)}}[name]
    pairs = read_pairs(params.out("data", "train.jsonl"))
    rows = []
    for group in select_prompts(pairs, params.data.max_train_prompts):
        kept = [r for r in candidate_rows_from_dataset(group, 1) if r["origin"] in origins]
        rows += [dict(r, reward=origins[r["origin"]][0], rank=origins[r["origin"]][1], n_ranked=len(kept))
                 for r in kept]
    if not rows:
        raise DataError(f"{params.out('data', 'train.jsonl')}: no training prompts for the {name} variant")
    return rows


def _variant_key(v) -> str:
    """What a variant's trained policy depends on: its params (but not where it writes) and its input data."""
    tree = v.model_dump(mode="json")
    tree["paths"].pop("out")
    tree.pop("evaluate")
    tree.pop("gate")
    from neat.models import checkpoint_id

    blob = json.dumps(tree, sort_keys=True) + file_digest(v.out("data", "train.jsonl"))
    if v.train.rounds > 1 or v.expand.k_pos or v.expand.k_neg:  # the training reward model ranks candidates
        blob += checkpoint_id(v.reward.model, seed=v.reward.seed)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# The manifest's stages (neat/stages.py), split: those run once under `<out>` and shared by every variant,
# and those each variant runs for itself, before `train` (then `evaluate`), in the manifest's order.
SHARED_STAGES = ("prepare", "train-rm", "train-eval-rm")


def variant_stages() -> list[str]:
    """The stages a variant sampling its own candidates runs before `train`: expand, score."""
    from neat.stages import stages_before

    return [s.name for s in stages_before("train") if s.name not in SHARED_STAGES]


def _ensure_upstream(params, progress: bool) -> dict:
    """Prepared data and both reward models under `<out>`, produced if missing; returns seconds per stage."""
    from neat.stages import pipeline

    missing = {
        "prepare": not params.out("data", "eval.jsonl").is_file(),
        "train-rm": params.reward.train and not params.out("reward_model").is_dir(),
        "train-eval-rm": params.evaluate.train_reward_model and not params.out("eval_reward_model").is_dir(),
    }
    options = {"train-eval-rm": {"progress": progress}}
    seconds = {}
    for stage in pipeline():
        if stage.name in SHARED_STAGES and missing[stage.name]:
            start = time.perf_counter()
            stage.load()(params, **options.get(stage.name, {}))
            seconds[stage.dvc_name] = round(time.perf_counter() - start, 1)
    return seconds


def train_variant(v, name: str, progress: bool = True) -> dict:
    """Expand → score → train for one variant (SFT, DPO: dataset rows → train); skipped when up to date."""
    from neat.candidates import write_candidates
    from neat.stages import STAGES

    key = _variant_key(v)
    marker = v.out("variant.json")
    if marker.is_file() and v.out("policy").is_dir() and v.out("metrics", "train.json").is_file():
        done = json.loads(marker.read_text())
        if done.get("key") == key:
            return done | {"skipped": True}
    seconds: dict[str, float] = {}
    if name in DATASET_ONLY:
        write_candidates(v.out("score", "candidates.parquet"), dataset_rows(v, name))
    else:
        for stage in variant_stages():
            start = time.perf_counter()
            STAGES[stage].load()(v)
            seconds[stage] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    summary = STAGES["train"].load()(v)
    seconds["train"] = round(time.perf_counter() - start, 1)
    done = {"key": key, "name": name, "steps": summary.get("steps"), "seconds": seconds}
    write_json_atomic(marker, done)
    return done | {"skipped": False}


# ---------------------------------------------------------------- the table


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def differences(ref: dict, other: dict, *, n_resamples: int, seed: int) -> dict:
    """Paired bootstrap of `other − ref` on the same prompts: reward, win rate vs base, perplexity ratio, safety."""
    from neat.evaluate import paired_diff, perplexity_ratio_ci
    from neat.stats import win_values

    g_ref, g_oth = ref["generations"], other["generations"]
    if [r["prompt_id"] for r in g_ref] != [r["prompt_id"] for r in g_oth]:
        raise DataError("variants were evaluated on different held-out prompts; rerun compare from scratch")
    boot = dict(n_resamples=n_resamples, seed=seed)
    idx = [i for i in range(len(g_ref))
           if all(_finite(g[i][k]) for g in (g_ref, g_oth) for k in ("base_reward", "trained_reward"))]
    t_ref = [g_ref[i]["trained_reward"] for i in idx]
    t_oth = [g_oth[i]["trained_reward"] for i in idx]
    out: dict[str, Any] = {"eval_reward_mean": paired_diff(t_oth, t_ref, **boot)}
    if idx:
        w_ref = win_values(t_ref, [g_ref[i]["base_reward"] for i in idx])
        w_oth = win_values(t_oth, [g_oth[i]["base_reward"] for i in idx])
        out["win_rate"] = paired_diff(list(w_oth), list(w_ref), **boot)
    else:
        out["win_rate"] = paired_diff([], [], **boot)
    ratio = perplexity_ratio_ci([r["trained_chosen_nll"] for r in g_oth], [r["trained_chosen_nll"] for r in g_ref],
                                [r["chosen_tokens"] for r in g_ref], **boot)
    out["perplexity"] = {"diff": ratio["ratio"], "ci_low": ratio["ci_low"], "ci_high": ratio["ci_high"],
                         "significant": ratio["significant"], "kind": "ratio"}
    s_ref, s_oth = ref["safety"], other["safety"]
    for key, label, flip in (("unsafe_refusal_rate", "unsafe", False), ("safe_compliance_rate", "safe", True)):
        sel = [i for i, r in enumerate(s_ref) if r["label"] == label]
        a = [float(s_oth[i]["trained_refused"] != flip) for i in sel]
        b = [float(s_ref[i]["trained_refused"] != flip) for i in sel]
        out[key] = paired_diff(a, b, **boot)
    return out


def _delta(d: dict | str | None, digits=3, ratio=False) -> str:
    if d == "reference":
        return "(reference)"
    if not d or not _finite(d.get("diff")):
        return "–"
    sign = "×" if ratio else ("+" if d["diff"] >= 0 else "")
    where = "**outside**" if d["significant"] else "inside"
    return f"{sign}{d['diff']:.{digits}f} [{d['ci_low']:.{digits}f}, {d['ci_high']:.{digits}f}] {where}"


def format_table(variants: list[dict], reference: str) -> str:
    """Markdown: one row per variant (and the base), each metric with its interval, Δ vs the reference."""
    base = variants[0]["metrics"]
    lines = [
        f"Metrics with 95 % bootstrap intervals over the same {base.get('prompts')} held-out prompts and "
        f"{base.get('safety', {}).get('base', {}).get('n', 0)} safety prompts. Δ: paired bootstrap of the difference "
        f"to `{reference}` (perplexity: ratio); *inside* = the interval contains 0 (×1 for the ratio), i.e. not "
        "distinguishable at this sample size; **outside** = a difference at the 95 % level.",
        "",
        "| variant | steps | eval reward | Δ reward | win rate vs base | Δ win rate | perplexity | Δ perplexity "
        "| unsafe refusal | Δ unsafe refusal | safe compliance | Δ safe compliance |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| base (`{base.get('base_model')}`) | 0 | {format_interval(base, 'base_eval_reward_mean')} | | | | "
        f"{format_interval(base, 'base_perplexity', 2)} | | {format_interval(base, 'base_unsafe_refusal_rate', 2)} | | "
        f"{format_interval(base, 'base_safe_compliance_rate', 2)} | |",
    ]
    for v in variants:
        m, d = v["metrics"], v.get("vs_reference") or {}
        if v["name"] == reference:
            d = {k: "reference" for k in ("eval_reward_mean", "win_rate", "perplexity", "unsafe_refusal_rate",
                                          "safe_compliance_rate")}
        lines.append(
            f"| {v['name']} | {v.get('steps')} | {format_interval(m, 'eval_reward_mean')} | "
            f"{_delta(d.get('eval_reward_mean'))} | {format_interval(m, 'win_rate', 2)} | {_delta(d.get('win_rate'), 2)} | "
            f"{format_interval(m, 'perplexity', 2)} | {_delta(d.get('perplexity'), 3, ratio=True)} | "
            f"{format_interval(m, 'unsafe_refusal_rate', 2)} | {_delta(d.get('unsafe_refusal_rate'), 2)} | "
            f"{format_interval(m, 'safe_compliance_rate', 2)} | {_delta(d.get('safe_compliance_rate'), 2)} |"
        )
    lines += ["", "Variants: " + "; ".join(f"`{v['name']}` — {VARIANTS[v['name']]}" for v in variants) + "."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the stage


def compare(params, variants: Sequence[str] | None = None, progress: bool = True) -> dict:
    """Stage: train and evaluate each variant against the same base → `<out>/compare/table.md` and `compare.json`."""
    from neat.evaluate import evaluate
    from neat.io import json_safe

    names = list(variants) if variants else list(DEFAULT_VARIANTS)
    if len(set(names)) != len(names) or not names:
        raise ConfigError(f"compare: variants must be distinct and non-empty (got {names})")
    started = time.perf_counter()
    root = params.out("compare")
    every = {name: variant_params(params, name, root) for name in names}  # a refused variant stops nothing midway
    upstream = _ensure_upstream(params, progress)
    cache = params.out("cache", "eval_generations")
    results = []
    for name in names:
        v = every[name]
        shutil.copytree(params.out("data"), v.out("data"), dirs_exist_ok=True)
        trained = train_variant(v, name, progress=progress)
        start = time.perf_counter()
        metrics = evaluate(v, tag=name, progress=progress, generation_cache=cache)
        results.append({
            "name": name, "description": VARIANTS[name], "out": str(v.out()), "steps": trained.get("steps"),
            "retrained": not trained["skipped"], "seconds": trained.get("seconds", {}) | {
                "evaluate": round(time.perf_counter() - start, 1)},
            "metrics": metrics,
            "generations": read_jsonl(v.out("evaluate", "generations.jsonl")),
            "safety": read_jsonl(v.out("evaluate", "safety.jsonl")),
        })
    reference = "neat" if "neat" in names else names[0]
    ref = next(r for r in results if r["name"] == reference)
    for r in results:
        r["vs_reference"] = None if r is ref else differences(ref, r, n_resamples=params.evaluate.bootstrap,
                                                              seed=params.seed)
    table = format_table(results, reference)
    for r in results:
        del r["generations"], r["safety"]
    steps = {r["name"]: r["steps"] for r in results}
    summary = json_safe({
        "reference": reference, "variants": results, "equal_steps": len(set(steps.values())) == 1,
        "upstream_seconds": upstream, "seconds": round(time.perf_counter() - started, 1),
    })
    write_text_atomic(root / "table.md", table)
    write_json_atomic(root / "compare.json", summary)
    flat = {r["name"]: {k: r["metrics"].get(k) for k in (
        "eval_reward_mean", "win_rate", "perplexity", "unsafe_refusal_rate", "safe_compliance_rate")}
        | {"steps": r["steps"]} for r in results}
    write_json_atomic(params.out("metrics", "compare.json"), json_safe(flat))
    if not summary["equal_steps"]:
        log.warning("neat compare: variants took different numbers of optimizer steps %s "
                    "(train.grad_accum does not divide the batches per round)", steps)
    return summary
