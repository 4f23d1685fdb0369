"""Compare trained variants against the same base on the same prompts (`neat compare`).

Variants (`VARIANTS`), each trained from the same base policy with the same prompts, the same
training reward model and the same number of optimizer steps:

* ``neat`` — the params as given (positive *and* negative steered samples; `expand.k_neg` is set to 2
  if the params have 0);
* ``rrhf`` — the online-RRHF ablation: `expand.k_neg: 0`, everything else equal;
* ``sft`` — supervised fine-tuning on the dataset's chosen responses only: one candidate per prompt
  (so the ranking term is 0 and the loss is the SFT term), `train.rounds: 1` with
  `epochs_per_round` multiplied by the rounds and `train.steps_per_round` set to NEAT's steps over
  all rounds (`matched_steps`), hence the same optimizer steps and lr schedule;
* ``neat_pro`` — ``neat`` with the PRO loss (`train.loss: pro`);
* ``dpo`` — offline DPO on the dataset's chosen/rejected responses only, chosen above rejected by the
  human label (`train.pair_labels: origin`); no sampling, one round of NEAT's steps as for ``sft`` (it
  has pairs for fewer prompts, so it visits them more often);
* ``online_dpo`` — ``neat``'s candidates (sampled, scored, every round), DPO on each prompt's
  best-vs-worst pair by reward;
* ``rlcd`` — DPO on (positive-steered, negative-steered) pairs labelled by their origin
  (`train.pair_labels: origin`), without the dataset's responses and without the training reward
  model: every round's candidates are labelled by origin (`neat.train.origin_scorer`), none is scored.

The two dataset-only variants (`DATASET_ONLY`) do not expand, but they train on the same prompt mix as
the others: with `data.max_benign_prompts` or `data.max_harmful_prompts` on, the base policy answers the
benign prompts and harmful requests as in `neat expand` (`neat.base_mix.produce_mix`), and `dataset_rows`
adds those pairs (``sft`` their chosen responses, ``dpo`` those with a rejected one, so no benign
prompt).

The DPO variants train on DPO alone (`train.rank_weight: 1`, `sft_weight: 0`, `anchor_weight: 0`: β,
`train.dpo_beta`, is their KL term) against the reference policy, the base with its LoRA adapters off,
so they need `policy.lora.enabled`.

`compare.variants` names the variants, each with its training seeds. `neat compare-variant --variant
NAME` (one DVC stage instance per variant in compare/dvc.yaml) runs, for each seed, the manifest's
variant chain (neat/stages.py `VARIANT_CHAIN`: expand, score, train, evaluate) with a deep copy of the
params whose `paths.out` is `<out>/compare/<name>/seed<k>` and whose `seed` is k for training (the
evaluation keeps the run's `seed` and `evaluate.seed`, so every variant and seed answers the same prompts beside
the same base answers). The prepared data is copied there and the reward models of `<out>` are used as given
(`reward.train: false`, `evaluate.train_reward_model: false`), so they are trained once. It writes
`<out>/compare/per_prompt/<name>.json` (each seed's metrics and per-prompt scores) and
`<out>/metrics/compare/<name>.json`. `neat compare-table` (neat/compare_table.py) turns them into the
table. `neat compare` runs the variants in order, then the table; it produces missing upstream outputs
(prepared data, reward models) first and reuses a seed whose inputs and params are unchanged since its
last run (`variant.json`, `evaluated.json`), so a killed comparison continues seed by seed. Variants of a
seed whose round-1 inputs are the same (``neat``, ``neat_pro``, ``online_dpo``) sample and score round 1
once: the later ones copy the earlier one's `expand/` and `score/` (`round_one_fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Sequence

from neat.compare_table import GENERATION_FIELDS, SAFETY_FIELDS, TABLE_KEYS, finite_mean, variant_seeds
from neat.errors import ConfigError, DataError
from neat.io import file_digest, write_json_atomic

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
# trained on the dataset's responses only (no expand, no score): rows written by `dataset_rows`
DATASET_ONLY = ("sft", "dpo")
DPO_VARIANTS = ("dpo", "online_dpo", "rlcd")


def variant_params(params, name: str, root: Path, seed: int | None = None):
    """A deep copy of `params` for variant `name` trained with `seed` (default: `seed` of `params`), writing
    under `root/name/seed<seed>`, sharing the reward models."""
    from neat.evaluate import eval_reward_model_ref
    from neat.reward import reward_model_ref

    if name not in VARIANTS:
        raise ConfigError(f"unknown variant '{name}'; choose from {', '.join(VARIANTS)}")
    seed = params.seed if seed is None else seed
    v = params.model_copy(deep=True)
    v.seed = seed
    v.paths.out = str(Path(root) / name / f"seed{seed}")
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
        v.train.loss, v.train.rank_weight = "dpo", 1.0
        if not (params.compare.dpo_brake and name in ("dpo", "online_dpo")):
            v.train.sft_weight, v.train.anchor_weight = 0.0, 0.0
    if name in ("dpo", "rlcd"):
        v.train.pair_labels = "origin"
    if name == "rlcd":
        v.expand.k_pos = v.expand.k_pos or 2
        v.train.include_dataset_responses = False
    return v


def dataset_rows(params, name: str) -> list[dict]:
    """Scored rows of the dataset's responses for the training prompts, then of the mix pairs
    (`neat.base_mix`: benign prompts and harmful requests, answered by the base policy) that
    `produce_mix` wrote to `<out>/expand/`, one group per pair as `neat expand` adds them:

    * `sft`: the chosen responses only (reward 0, rank 0): a benign prompt's base answer, a harmful
      request's written refusal;
    * `dpo`: chosen (reward 1, rank 0) above rejected (reward 0, rank 1), the human label; of the mix
      pairs only those with both (a harmful request whose base answer complied: refusal above that
      answer). A pair without a rejected response (every benign prompt, a request the base refused)
      gives DPO no pair and is left out, so `dpo` trains on fewer prompts than the others when the
      benign mix is on (and visits them more often: `matched_steps`)."""
    from neat.base_mix import read_mix_pairs
    from neat.data import read_pairs
    from neat.steering import candidate_rows_from_dataset, select_prompts

    origins = {"sft": {"chosen": (0.0, 0)}, "dpo": {"chosen": (1.0, 0), "rejected": (0.0, 1)}}[name]
    groups = select_prompts(read_pairs(params.out("data", "train.jsonl")), params.data.max_train_prompts)
    benign, harmful = read_mix_pairs(params, required_by=f"the {name} variant")
    groups += [[pair] for pair in benign + harmful if name == "sft" or pair.rejected is not None]
    rows = []
    for group in groups:
        kept = [r for r in candidate_rows_from_dataset(group, 1) if r["origin"] in origins]
        rows += [dict(r, reward=origins[r["origin"]][0], rank=origins[r["origin"]][1], n_ranked=len(kept))
                 for r in kept]
    if not rows:
        raise DataError(f"{params.out('data', 'train.jsonl')}: no training prompts for the {name} variant")
    return rows


def matched_steps(params, v) -> int:
    """The optimizer steps of a dataset-only variant (`v`, one round): NEAT's over the run's rounds on the
    prompts `neat expand` samples, the training prompts plus the mix's benign prompts and harmful requests.
    `dpo`, which has a pair for fewer of them, visits its prompts more often to take as many steps. (NEAT
    trains on fewer when a prompt drops out, e.g. a benign prompt the base refused; then it takes at most
    a step per round less.)"""
    from neat.base_mix import mix_inputs
    from neat.data import read_pairs
    from neat.steering import select_prompts
    from neat.training.groups import round_steps

    benign, harmful = mix_inputs(v)
    n = len(select_prompts(read_pairs(v.out("data", "train.jsonl")), v.data.max_train_prompts)) + len(benign) + len(harmful)
    return round_steps(max(n, 1), params.train) * params.train.rounds


def uses_reward_model(v) -> bool:
    """Whether the training reward model labels (or, for the logs, scores) a variant's candidates."""
    return v.train.pair_labels != "origin"


def _variant_key(v, legacy: bool = False) -> str:
    """What a variant's trained policy depends on: its params (but not where it writes) and its input data,
    the files of the enabled prompt mixes included (their counts are params), and the training reward
    model's content where the variant uses it. `legacy`: the key as computed before session 15, which also
    hashed the reward model's path (under `<out>`, so a run moved to another `paths.out` retrained); it is
    still accepted so that finished runs stay valid."""
    from neat.base_mix import mix_source_digests
    from neat.models import checkpoint_id

    tree = v.model_dump(mode="json")
    tree["paths"].pop("out")
    tree["expand"], tree["train"] = v.expand.key(), v.train.key()
    if not legacy:
        tree["reward"].pop("model")
    for section in ("evaluate", "gate", "compare"):
        tree.pop(section)
    if tree["train"].get("steps_per_round") is None:  # (unset: keys from before the option stay valid)
        tree["train"].pop("steps_per_round", None)
    blob = json.dumps(tree, sort_keys=True) + file_digest(v.out("data", "train.jsonl"))
    mix_files = mix_source_digests(v)
    if mix_files:  # (nothing when both mixes are off: earlier keys stay valid)
        blob += json.dumps(mix_files, sort_keys=True)
    if uses_reward_model(v) and (v.train.rounds > 1 or v.expand.k_pos or v.expand.k_neg):  # the RM ranks them
        blob += checkpoint_id(v.reward.model, seed=v.reward.seed)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _evaluation_key(ev, trained_key: str, legacy: bool = False) -> str:
    """What a variant's evaluation depends on besides its policy: the evaluate params, the run's seed, the
    held-out and safety prompts, the judge's files and the evaluation reward model's content (`legacy`:
    its path as well, as before session 15; see `_variant_key`)."""
    from neat.evaluate import eval_reward_model_ref, reported_judges
    from neat.models import checkpoint_id

    files = [ev.out("data", "eval.jsonl"), ev.paths.safety_prompts, ev.paths.judge_labels]
    if "learned" in reported_judges(ev):
        files.append(ev.paths.refusal_examples)
    digests = [file_digest(f) if Path(f).is_file() else None for f in files]
    evaluate = ev.evaluate.model_dump(mode="json")
    if not legacy:
        evaluate.pop("reward_model")
    if evaluate["seed"] == ev.seed:  # drawn with the run's seed, as before `evaluate.seed`: earlier keys stay valid
        evaluate.pop("seed")
    blob = json.dumps([trained_key, ev.seed, evaluate, ev.policy.model, digests,
                       checkpoint_id(eval_reward_model_ref(ev))], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# The manifest's stages (neat/stages.py) run once under `<out>` and shared by every variant; each variant
# then runs `VARIANT_CHAIN` (expand, score, train, evaluate) for itself.
SHARED_STAGES = ("prepare", "train-rm", "train-eval-rm")


def _ensure_upstream(params, names: Sequence[str], progress: bool) -> dict:
    """Prepared data and the reward models the variants `names` use, under `<out>`, produced if missing;
    returns seconds per stage."""
    from neat.stages import pipeline

    needs_rm = any(uses_reward_model(variant_params(params, n, params.out("compare"))) for n in names)
    missing = {
        "prepare": not params.out("data", "eval.jsonl").is_file(),
        "train-rm": needs_rm and params.reward.train and not params.out("reward_model").is_dir(),
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


def label_by_origin(v) -> dict:
    """The `score` step of a variant whose pairs are labelled by origin (rlcd): the expanded candidates
    labelled positive 1 / negative 0 and ranked, no reward model loaded → `score/candidates.parquet`."""
    from neat.candidates import read_candidates, write_candidates
    from neat.train import origin_scorer

    rows = origin_scorer(v)(read_candidates(v.out("expand", "candidates.parquet")))
    write_candidates(v.out("score", "candidates.parquet"), rows)
    return {"candidates": len(rows)}


# ---------------------------------------------------------------- round 1, shared between variants
# `neat`, `neat_pro` and `online_dpo` of a seed expand the same prompts from the same base with the same
# params and score them with the same reward model: their round-1 candidates are identical, so a variant
# copies them from another variant of its seed whose stage ran under the same fingerprint (the one that
# keys the stage's own resume shards) instead of sampling them again. `round1.json` in a seed's folder
# holds the fingerprint each of its round-1 stages last completed under.
ROUND_ONE_MARKER = "round1.json"


def round_one_fingerprint(v, stage: str) -> str | None:
    """What a variant's `expand` or `score` output depends on (None: a stage that is not shared)."""
    from neat.expand import expand_fingerprint
    from neat.models import checkpoint_id
    from neat.reward import reward_model_ref, score_fingerprint

    if stage == "expand":
        train_path = v.out("data", "train.jsonl")
        return expand_fingerprint(v, train_path, checkpoint_id(v.policy.model, seed=v.seed))
    if stage == "score" and uses_reward_model(v) and v.out("expand", "candidates.parquet").is_file():
        return score_fingerprint(v, v.out("expand", "candidates.parquet"), reward_model_ref(v))
    return None


def _round_one_marks(seed_dir: Path) -> dict:
    try:
        return json.loads((seed_dir / ROUND_ONE_MARKER).read_text())
    except (OSError, ValueError):
        return {}


def _mark_round_one(v, stage: str, fingerprint: str | None) -> None:
    marks = _round_one_marks(v.out()) | {stage: fingerprint}
    write_json_atomic(v.out(ROUND_ONE_MARKER), {k: f for k, f in marks.items() if f})


def _round_one_donor(v, stage: str, fingerprint: str | None) -> Path | None:
    """Another variant's seed folder (same seed) whose `stage` completed under `fingerprint`."""
    if fingerprint is None:
        return None
    here = v.out().resolve()
    for seed_dir in sorted(here.parent.parent.glob(f"*/{here.name}")):
        if seed_dir.resolve() != here and _round_one_marks(seed_dir).get(stage) == fingerprint \
                and (seed_dir / stage).is_dir():
            return seed_dir
    return None


def _copy_dir(source: Path, target: Path) -> None:
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def train_variant(v, name: str, progress: bool = True) -> dict:
    """Expand → score → train for one variant and seed (SFT, DPO: dataset rows → train; rlcd: candidates
    labelled by origin instead of scored); skipped when up to date."""
    from neat.candidates import write_candidates
    from neat.stages import STAGES, VARIANT_CHAIN

    key = _variant_key(v)
    marker = v.out("variant.json")
    if marker.is_file() and v.out("policy").is_dir() and v.out("metrics", "train.json").is_file():
        done = json.loads(marker.read_text())
        if done.get("key") in (key, _variant_key(v, legacy=True)):
            return done | {"skipped": True}
    seconds: dict[str, float] = {}
    reused: dict[str, str] = {}
    mix_stats: dict = {}
    start = time.perf_counter()
    if name in DATASET_ONLY:  # no sampling: the dataset's responses and the mix pairs are the candidates
        from neat.base_mix import produce_mix

        mix_stats = produce_mix(v)  # the base answers the mix as in `neat expand` (no policy loaded when off)
        seconds["mix"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        write_candidates(v.out("score", "candidates.parquet"), dataset_rows(v, name))
        seconds["dataset_rows"] = round(time.perf_counter() - start, 1)
        # `neat train` reads the mix files too (read_mix_pairs), but only to
        # sample rounds >= 2; a dataset-only variant trains one round (variant_params), on these rows alone
    else:
        for stage in VARIANT_CHAIN[: VARIANT_CHAIN.index("train")]:
            start = time.perf_counter()
            fingerprint = round_one_fingerprint(v, stage)
            donor = _round_one_donor(v, stage, fingerprint)
            _mark_round_one(v, stage, None)  # (a kill mid-stage leaves no stale claim for others to copy)
            if donor is not None:
                _copy_dir(donor / stage, v.out(stage))
                reused[stage] = str(donor.relative_to(donor.parents[1]))
            else:
                run = label_by_origin if stage == "score" and not uses_reward_model(v) else STAGES[stage].load()
                run(v)
            _mark_round_one(v, stage, fingerprint)
            seconds[stage] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    summary = STAGES["train"].load()(v)
    seconds["train"] = round(time.perf_counter() - start, 1)
    done = {"key": key, "name": name, "seed": v.seed, "steps": summary.get("steps"), "seconds": seconds}
    if mix_stats:  # what the base answered of the mix (a sampling variant's are in its expand/stats.json)
        done["mix"] = mix_stats
    if reused:  # round-1 stages copied from another variant of the same seed (their seconds: the copy's)
        done["reused"] = reused
    write_json_atomic(marker, done)
    return done | {"skipped": False}


def evaluation_params(v, params):
    """The variant's params for evaluating it: the run's `seed` (the same prompts and base answers for
    every variant and seed). A base whose weights depend on the seed (builtin:tiny-random, tests only)
    is then not the one a seed k ≠ `seed` trained from."""
    ev = v.model_copy(deep=True)
    ev.seed = params.seed
    return ev


def _slim(rows: list[dict], fields: tuple[str, ...]) -> list[dict]:
    return [{k: r.get(k) for k in fields} for r in rows]


def seed_params(params, name: str, seed: int):
    """The params variant `name` trains with under `seed` (`variant_params`), with the prepared data copied
    to its output folder and, for a dataset-only variant, NEAT's optimizer steps (`matched_steps`)."""
    v = variant_params(params, name, params.out("compare"), seed)
    for part in ("train.jsonl", "eval.jsonl"):  # what the chain reads of the prepared data
        v.out("data").mkdir(parents=True, exist_ok=True)
        shutil.copy2(params.out("data", part), v.out("data", part))
    if name in DATASET_ONLY:  # as many optimizer steps as NEAT, however many prompts have a pair
        v.train.steps_per_round = matched_steps(params, v)
    return v


def run_seed(params, name: str, seed: int, progress: bool = True) -> dict:
    """Train (unless up to date) and evaluate (unless up to date) variant `name` with `seed` → its metrics,
    per-prompt scores, steps and seconds."""
    from neat.evaluate import evaluate
    from neat.io import read_jsonl

    v = seed_params(params, name, seed)
    trained = train_variant(v, name, progress=progress)
    ev = evaluation_params(v, params)
    key = _evaluation_key(ev, trained["key"])
    marker = v.out("evaluated.json")
    done = json.loads(marker.read_text()) if marker.is_file() else {}
    if done.get("key") in (key, _evaluation_key(ev, trained["key"], legacy=True)) \
            and v.out("metrics", "evaluate.json").is_file():
        metrics = json.loads(v.out("metrics", "evaluate.json").read_text())
        evaluate_seconds = done["seconds"]
    else:
        start = time.perf_counter()
        metrics = evaluate(ev, tag=f"{name}-seed{seed}", progress=progress,
                           generation_cache=params.out("cache", "eval_generations"))
        evaluate_seconds = round(time.perf_counter() - start, 1)
        write_json_atomic(marker, {"key": key, "seconds": evaluate_seconds})
    return {"seed": seed, "out": str(v.out()), "steps": trained.get("steps"),
            "retrained": not trained["skipped"], "seconds": trained.get("seconds", {}) | {"evaluate": evaluate_seconds},
            "metrics": metrics,
            "generations": _slim(read_jsonl(v.out("evaluate", "generations.jsonl")), GENERATION_FIELDS),
            "safety": _slim(read_jsonl(v.out("evaluate", "safety.jsonl")), SAFETY_FIELDS)}


# ---------------------------------------------------------------- the stages


def compare_variant(params, variant: str, progress: bool = True) -> dict:
    """Stage: train and evaluate one variant once per seed of `compare.variants` →
    `<out>/compare/<variant>/seed<k>/`, `<out>/compare/per_prompt/<variant>.json` (each seed's metrics and
    per-prompt scores, what the table reads) and `<out>/metrics/compare/<variant>.json`."""
    from neat.io import json_safe

    seeds = variant_seeds(params, variant)
    for seed in seeds:  # a refused variant stops before anything runs
        variant_params(params, variant, params.out("compare"), seed)
    _ensure_upstream(params, [variant], progress)
    runs = [run_seed(params, variant, seed, progress) for seed in seeds]
    write_json_atomic(params.out("compare", "per_prompt", f"{variant}.json"),
                      json_safe({"name": variant, "description": VARIANTS[variant], "seeds": runs}))
    flat = {f"seed{r['seed']}": {k: r["metrics"].get(k) for k in TABLE_KEYS} | {"steps": r["steps"]} for r in runs}
    if len(runs) > 1:
        flat["mean"] = {k: finite_mean(r["metrics"].get(k) for r in runs) for k in TABLE_KEYS}
    write_json_atomic(params.out("metrics", "compare", f"{variant}.json"), json_safe(flat))
    return json_safe({"name": variant, "seeds": [{k: r[k] for k in ("seed", "out", "steps", "retrained", "seconds")}
                                                 for r in runs], "metrics": flat})


def compare(params, variants: Sequence[str] | None = None, progress: bool = True) -> dict:
    """Stage: every variant of `compare.variants` (or `variants`) in order, each seed reused when up to
    date, then the table (`neat compare-table`) → `<out>/compare/table.md` and `compare.json`."""
    from neat.compare_table import compare_table

    names = list(variants) if variants else list(params.compare.variants)
    if len(set(names)) != len(names) or not names:
        raise ConfigError(f"compare: variants must be distinct and non-empty (got {names})")
    for name in names:  # a refused variant stops nothing midway
        for seed in variant_seeds(params, name):
            variant_params(params, name, params.out("compare"), seed)
    started = time.perf_counter()
    upstream = _ensure_upstream(params, names, progress)
    for name in names:
        compare_variant(params, name, progress)
    return compare_table(params, names) | {"upstream_seconds": upstream, "seconds": round(time.perf_counter() - started, 1)}
