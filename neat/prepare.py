"""The `prepare` stage: read `paths.data`, check its rows, split by prompt hash (`neat prepare`).

The data library (`neat.data`: parsing HH/TRL rows, the prepared-pair format, splitting, inspection)
does the work; this module reads the params and writes the outputs.
"""

from __future__ import annotations

from neat.data import inspect_preferences, read_preferences, split_pairs, write_pairs


def prepare(params) -> dict:
    """Stage: read `paths.data`, split by prompt hash, write `<out>/data/{train,eval,judge}.jsonl`.

    Splits are written whole: the reward models train on every pair of their split; the policy
    stages cap how many prompts they use (`data.max_train_prompts`, `evaluate.max_prompts`).
    """
    result = read_preferences(params.paths.data, params.data.format, params.data.hub_split,
                              max_row_chars=params.data.max_row_chars, hub_revision=params.data.hub_revision)
    d = params.data
    splits = split_pairs(result.pairs, d.eval_fraction, d.judge_fraction, d.split_salt)
    out_dir = params.out("data")
    stats = inspect_preferences(result)
    stats["splits"] = {k: {"pairs": len(v), "prompts": len({p.prompt_id for p in v})} for k, v in splits.items()}
    from neat.io import write_json_atomic
    from neat.output_sets import output_set

    with output_set(params.out(), "prepare") as staged:  # train/eval/judge/stats change together or not at all
        for name, pairs in splits.items():
            write_pairs(staged(out_dir / f"{name}.jsonl"), pairs)
        write_json_atomic(staged(out_dir / "stats.json"), stats)
    return stats
