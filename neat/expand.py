"""Stage `neat expand`: round-1 candidates from the base policy → `<out>/expand/candidates.parquet`.

Reads the train split, samples steered candidates for its prompts with `neat.steering` and writes
them with `neat.candidates`, plus `expand/stats.json`.

The prompts are processed in shards of `expand.shard_size`; each finished shard is saved under
`paths.checkpoints` (outside the DVC outputs), so a killed `neat expand` continues from the
completed shards ("resuming: k of n shards done") and ends with the same candidates as an
uninterrupted run. Shards are keyed by a hash of the inputs, params and policy: stale ones are
never reused.
"""

from __future__ import annotations

from pathlib import Path

import torch

from neat.base_mix import base_generator, mix_inputs, mix_pairs, write_mix_pairs
from neat.benign import benign_enabled
from neat.candidates import write_candidates
from neat.harmful import harmful_enabled
from neat.data import read_pairs
from neat.generation import use_generation_params
from neat.steering import build_candidates, select_prompts, shard_groups


def expand_fingerprint(params, train_path: Path, policy_id: str) -> str:
    """Everything the expansion depends on: a shard saved under another fingerprint is never reused."""
    from neat.io import fingerprint_of

    desc = {"stage": "expand", "format": 1, "seed": params.seed, "policy": params.policy.model_dump(mode="json"),
            "policy_id": policy_id, "expand": params.expand.key(),
            "max_train_prompts": params.data.max_train_prompts,
            "include_dataset": params.train.include_dataset_responses}
    extra = [train_path]
    if benign_enabled(params):  # (absent otherwise: earlier fingerprints stay valid)
        desc["max_benign_prompts"] = params.data.max_benign_prompts
        extra.append(Path(params.paths.benign_prompts))
    if harmful_enabled(params):
        desc["max_harmful_prompts"] = params.data.max_harmful_prompts
        extra.append(Path(params.paths.harmful_requests))
    if params.generation.backend != "hf":  # other samplers: other samples (hf keeps its earlier fingerprints)
        desc["backend"] = params.generation.backend
    if params.generation.engine != "hf":  # the lean CPU loop draws other samples from the same distribution
        desc["engine"] = params.generation.engine
        if params.generation.batch_tokens:  # other batches, other per-batch seeds
            desc["batch_tokens"] = params.generation.batch_tokens
        if params.generation.decode_tokens:
            desc["decode_tokens"] = params.generation.decode_tokens
    if params.generation.cpu_dtype != "float32":  # bf16 copies sample other tokens (auto: on bf16 CPUs)
        from neat.models import native_bf16

        desc["cpu_dtype"] = params.generation.cpu_dtype
        desc["native_bf16"] = native_bf16(torch.device("cpu"))
    return fingerprint_of(desc, *extra)


def expand(params) -> dict:
    """Stage: round-1 candidates from the base policy → `<out>/expand/candidates.parquet`."""
    import time

    from neat.io import ShardStore, work_dir_for
    from neat.models import arithmetic, checkpoint_id

    use_generation_params(params.generation)
    if params.generation.backend == "vllm":  # fail before any work when vLLM cannot run here
        from neat.vllm_backend import require_vllm

        require_vllm()
    train_path = params.out("data", "train.jsonl")
    pairs = read_pairs(train_path)
    groups = select_prompts(pairs, params.data.max_train_prompts)
    inputs = mix_inputs(params)  # the benign prompts and harmful requests (none when off)
    policy_id = checkpoint_id(params.policy.model, seed=params.seed)  # builtin:tiny-random depends on it
    n_shards = len(shard_groups(groups, params.expand.shard_size))
    shards = ShardStore(work_dir_for(params.paths.checkpoints, params.paths.out, "expand"),
                        expand_fingerprint(params, train_path, policy_id), n_shards, label="expand")
    shards.announce()
    # vLLM: the tokenizer renders and tokenizes the prompts; the engine generates
    with base_generator(params) as (model, tokenizer):
        start = time.perf_counter()
        benign, harmful, mix_stats = mix_pairs(model, tokenizer, params, inputs)
        groups += [[pair] for pair in benign + harmful]
        rows, stats = build_candidates(model, tokenizer, groups, pairs, params.expand, seed=params.seed,
                                       policy_id=policy_id, round_=1,
                                       include_dataset=params.train.include_dataset_responses, shards=shards)
    stats |= mix_stats
    stats["seconds"] = round(time.perf_counter() - start, 2)
    stats["tokens_per_second"] = round(stats["generated_tokens"] / max(stats["seconds"], 1e-9), 1)
    stats["arithmetic"] = arithmetic(params, "generation")
    write_candidates(params.out("expand", "candidates.parquet"), rows)
    write_mix_pairs(params, benign, harmful)  # the online rounds' benign prompts and harmful requests (train)
    from neat.io import write_json_atomic

    write_json_atomic(params.out("expand", "stats.json"), stats)
    shards.finish()  # the output is complete: the shards are no longer needed
    return stats
