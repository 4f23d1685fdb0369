"""Stage `neat train`: online rounds of ranking-loss training → `<out>/policy`.

Reads the scored candidates (`score`), the train split (`data`) and, for the online rounds and the
dev-prompt curve, the training reward model; trains with `neat.training.trainer.Trainer`; writes the
merged policy (plus the LoRA adapter alone), its model card and `metrics/train.json`. The trainer
itself writes `train/log.csv`, `train/online.json` and `train/rounds/`, and keeps its resumable
state under `paths.checkpoints` (`neat.training.checkpoint`).
"""

from __future__ import annotations

import random
import time

import torch

from neat.base_mix import read_mix_pairs
from neat.candidates import SCORED_COLUMNS, read_candidates
from neat.data import read_pairs
from neat.io import write_json_atomic
from neat.models import arithmetic
from neat.steering import select_prompts
from neat.training.checkpoint import fingerprint, state_dir_for
from neat.training.trainer import Trainer, load_trainable_policy


def reward_scorer(params):
    """Scores and ranks candidate rows with the training reward model (for rounds >= 2)."""
    from neat.models import load_reward_model
    from neat.reward import reward_model_ref, score_candidates

    rm, rm_tok = load_reward_model(reward_model_ref(params), cache_dir=params.paths.cache,
                                   device=params.reward.device, trust_remote_code=params.reward.trust_remote_code,
                                   seed=params.reward.seed)
    return lambda rows: score_candidates(rows, rm, rm_tok, batch_size=params.reward.batch_size,
                                         max_length=params.reward.max_length)


def origin_scorer(params):
    """`train.pair_labels: origin` (RLCD, offline DPO): each round's candidates labelled by their origin
    (`ORIGIN_LABELS`: positive and chosen 1, negative and rejected 0) and ranked, no reward model loaded.
    Another origin (the dev probe's unsteered answers) gets no label (NaN): the online curve has no
    training reward then, and is still scored by the evaluation reward model at `evaluate`."""
    import math

    from neat.reward import rank_candidates
    from neat.training.groups import ORIGIN_LABELS

    return lambda rows: rank_candidates([{**r, "reward": ORIGIN_LABELS.get(r["origin"], math.nan)} for r in rows])


def round_scorer(params):
    """What labels the candidates of rounds >= 2 (and scores the dev probe): the training reward model, or
    with `train.pair_labels: origin` the candidates' origin alone."""
    return origin_scorer(params) if params.train.pair_labels == "origin" else reward_scorer(params)


def dev_prompts(pairs, params) -> list:
    """Train-split prompts the policy never trains on (those after `data.max_train_prompts`), for the online curve."""
    n = params.train.dev_prompts
    if not n or params.data.max_train_prompts is None:
        return []
    return select_prompts(pairs, None)[params.data.max_train_prompts : params.data.max_train_prompts + n]


def train(params, resume: bool = False, stop_after_steps: int | None = None) -> dict:
    """Stage: online rounds of ranking-loss training → `<out>/policy` (merged HF checkpoint)."""
    from neat.generation import use_generation_params
    from neat.models import save_model

    use_generation_params(params.generation)
    if params.generation.backend == "vllm" and params.train.rounds > 1:  # checked before round 1, not after it
        from neat.distributed import world_size_from_env
        from neat.vllm_backend import BackendUnavailable, require_vllm

        if world_size_from_env() > 1:
            # the round's engine would start inside this run's process group, which vLLM (one process,
            # its own group) does not join
            raise BackendUnavailable(
                f"generation.backend: vllm samples the online rounds of single-process training only; this run "
                f"has {world_size_from_env()} processes: set generation.backend: hf for it (or train.rounds: 1)")
        require_vllm()
    torch.manual_seed(params.seed)
    random.seed(params.seed)
    scored_path = params.out("score", "candidates.parquet")
    first_rows = read_candidates(scored_path, SCORED_COLUMNS, "score")
    pairs = read_pairs(params.out("data", "train.jsonl"))
    groups_source = select_prompts(pairs, params.data.max_train_prompts)
    benign, harmful = read_mix_pairs(params)  # the online rounds sample them again
    groups_source += [[pair] for pair in benign + harmful]
    model, tokenizer = load_trainable_policy(params)
    dev_source = dev_prompts(pairs, params)
    scorer = round_scorer(params) if params.train.rounds > 1 or dev_source else None
    out_dir = params.out("train")
    (out_dir / "rounds").mkdir(parents=True, exist_ok=True)  # a DVC output even with a single round
    started = time.perf_counter()
    trainer = Trainer(params, model, tokenizer, out_dir=out_dir, scorer=scorer,
                      state_dir=state_dir_for(params), answer_only={pair.prompt_id for pair in benign})
    summary = trainer.run(first_rows, groups_source, pairs, fingerprint_=fingerprint(params, scored_path),
                          resume=resume, stop_after_steps=stop_after_steps, dev_source=dev_source)
    if "stopped_at_step" in summary:
        return summary
    policy = trainer.full_policy()
    if not trainer.is_main:
        return summary
    save_model(policy, tokenizer, params.out("policy"), base_ref=params.policy.model)  # + adapter/ under LoRA
    last = trainer.log[-1] if trainer.log else {}
    summary |= {"seconds": round(time.perf_counter() - started, 1), "final_loss": last.get("loss"),
                "arithmetic": arithmetic(params, "generation", "policy_training")}
    write_json_atomic(params.out("metrics", "train.json"), summary)
    from neat.modelcard import write_model_card

    write_model_card(params.out("policy"), params, evaluation={})  # a previous run's evaluate.json is not this one's
    return summary
