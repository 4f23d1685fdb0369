"""The extra prompt mixes answered by the base policy: one way to produce them for every variant.

The benign prompts (`neat.benign`) and the harmful requests (`neat.harmful`) join the training prompts
with pairs built from the base policy's greedy answers. `neat expand` produces them beside its steered
samples; `neat compare`'s dataset-only variants (`sft`, `dpo`), which never expand, produce them here
too, with the same base, params and seed, so that every variant trains on the same mix. Both write them
to `<out>/expand/benign.jsonl` and `<out>/expand/harmful.jsonl`, where `neat train` reads them.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from neat.benign import benign_enabled, benign_pairs, read_benign_prompts
from neat.data import PreferencePair, write_pairs
from neat.harmful import harmful_enabled, harmful_pairs, read_harmful_requests

MIX_FILES = ("benign.jsonl", "harmful.jsonl")  # under <out>/expand


def mix_enabled(params) -> bool:
    return benign_enabled(params) or harmful_enabled(params)


def mix_inputs(params) -> tuple[list[str], list[tuple[str, str]]]:
    """The benign prompts and the harmful requests (prompt, refusal) the run trains on: the first
    `data.max_benign_prompts` / `data.max_harmful_prompts` of their files, none of a mix that is off.
    A missing file or a bad row stops with one line naming the file (and row)."""
    benign = read_benign_prompts(params.paths.benign_prompts)[:params.data.max_benign_prompts] \
        if benign_enabled(params) else []
    harmful = read_harmful_requests(params.paths.harmful_requests)[:params.data.max_harmful_prompts] \
        if harmful_enabled(params) else []
    return benign, harmful


def mix_source_digests(params) -> dict[str, str | None]:
    """The digest of each enabled mix's input file (None for a missing one, which `mix_inputs` reports):
    what a cached result built from the mix depends on besides `data.max_*_prompts`."""
    from neat.io import file_digest

    files = {"benign": (benign_enabled(params), params.paths.benign_prompts),
             "harmful": (harmful_enabled(params), params.paths.harmful_requests)}
    return {name: file_digest(path) if Path(path).is_file() else None
            for name, (enabled, path) in files.items() if enabled}


def mix_pairs(model, tokenizer, params, inputs: tuple[list[str], list[tuple[str, str]]] | None = None
              ) -> tuple[list[PreferencePair], list[PreferencePair], dict]:
    """(benign pairs, harmful pairs, stats) from the base policy `model`'s greedy answers to `inputs`
    (default: `mix_inputs(params)`), generated with `expand.max_new_tokens`, `expand.max_prompt_tokens`,
    `expand.batch_size` and `seed`."""
    benign_prompts, harmful_requests = mix_inputs(params) if inputs is None else inputs
    settings = {"max_new_tokens": params.expand.max_new_tokens, "max_prompt_tokens": params.expand.max_prompt_tokens,
                "batch_size": params.expand.batch_size, "seed": params.seed}
    benign, benign_stats = benign_pairs(model, tokenizer, benign_prompts, **settings)
    harmful, harmful_stats = harmful_pairs(model, tokenizer, harmful_requests, **settings)
    return benign, harmful, benign_stats | harmful_stats


def write_mix_pairs(params, benign: list[PreferencePair], harmful: list[PreferencePair]) -> None:
    """→ `<out>/expand/benign.jsonl` and `harmful.jsonl` (empty when the mix is off), what `read_mix_pairs`
    reads back."""
    for name, pairs in zip(MIX_FILES, (benign, harmful)):
        write_pairs(params.out("expand", name), pairs)


def read_mix_pairs(params, required_by: str | None = None) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(benign pairs, harmful pairs) written under `<out>/expand` (`write_mix_pairs`), none of a mix that is off.
    A missing file of an enabled mix gives none (a run that trains without an expansion has none), or, when
    `required_by` names who needs it, one DataError."""
    from neat.data import read_pairs
    from neat.errors import DataError

    found = []
    for file, enabled in zip(MIX_FILES, (benign_enabled(params), harmful_enabled(params))):
        path = params.out("expand", file)
        if enabled and not path.is_file() and required_by:
            raise DataError(f"{path}: {required_by}'s mix pairs not found (written by "
                            "neat.base_mix.produce_mix before its dataset rows)")
        found.append(read_pairs(path) if enabled and path.is_file() else [])
    return found[0], found[1]


@contextlib.contextmanager
def base_generator(params):
    """(model, tokenizer) of the base policy as `neat expand` samples it: the HF policy, or with
    `generation.backend: vllm` a vLLM engine (closed on exit) beside the tokenizer."""
    from neat.models import load_policy, load_tokenizer

    if params.generation.backend == "vllm":
        from neat.vllm_backend import engine_for_policy, require_vllm

        require_vllm()
        tokenizer = load_tokenizer(params.policy.model, cache_dir=params.paths.cache,
                                   trust_remote_code=params.policy.trust_remote_code, seed=params.seed)
        engine = engine_for_policy(params.policy.model, params, seed=params.seed)
        try:
            yield engine, tokenizer
        finally:
            engine.close()
    else:
        yield load_policy(params.policy.model, cache_dir=params.paths.cache, device=params.policy.device,
                          dtype=params.policy.dtype, trust_remote_code=params.policy.trust_remote_code,
                          seed=params.seed)


def produce_mix(params) -> dict:
    """The mix pairs of a run that does not expand (`neat compare`'s dataset-only variants): the base
    policy, loaded once and only when a mix is on, answers them as in `neat expand` →
    `<out>/expand/benign.jsonl`, `harmful.jsonl` (empty files when both mixes are off). Returns the stats."""
    from neat.generation import use_generation_params

    inputs = mix_inputs(params)  # a bad file stops before the policy loads
    if not mix_enabled(params):
        write_mix_pairs(params, [], [])
        return {}
    use_generation_params(params.generation)
    with base_generator(params) as (model, tokenizer):
        benign, harmful, stats = mix_pairs(model, tokenizer, params, inputs)
    write_mix_pairs(params, benign, harmful)
    return stats
