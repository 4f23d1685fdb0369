"""The dev sets hyperparameters are tuned on never overlap the evaluation prompts."""

from pathlib import Path

from benchmarks.dev_check import EVAL_SUBSET, dev_sets
from neat.config import load_params
from neat.data import read_pairs
from neat.evaluate import safety_subset
from neat.steering import select_prompts
from neat.judges import read_safety_csv

ROOT = Path(__file__).resolve().parents[1]


def test_xstest_dev_rows_lie_outside_both_evaluation_subsets_and_hh_dev_outside_training(tmp_path):
    from neat.prepare import prepare

    params = load_params(ROOT / "params.yaml", overrides=[f"paths.out={tmp_path}",
                                                          f"paths.data={ROOT / 'data/demo/hh_demo.jsonl'}"])
    prepare(params)
    rows = read_safety_csv(params.paths.safety_prompts)
    hh, xs = dev_sets(params, hh_start=4, hh_n=6, xstest_n=None)
    dev_ids = {r["id"] for r in xs}
    for limit in (40, EVAL_SUBSET):  # the default's and the benchmark profile's evaluation subsets
        assert not dev_ids & {r["id"] for r in safety_subset(rows, limit, params.seed)}
    assert len(xs) == len(rows) - EVAL_SUBSET and {r["label"] for r in xs} == {"safe", "unsafe"}
    first = [g[0].prompt_id for g in select_prompts(read_pairs(tmp_path / "data/train.jsonl"), None)]
    assert [p.prompt_id for p in hh] == first[4:10]


def test_steering_separation_averages_pairwise_wins_per_prompt_with_ties_half():
    from benchmarks.steering_separation import per_prompt_p

    rows = [  # prompt a: positives 0.5, 0.1 vs negatives 0.3 → pairs 1, 0 → 0.5
        {"prompt_id": "a", "origin": "positive", "r": 0.5}, {"prompt_id": "a", "origin": "positive", "r": 0.1},
        {"prompt_id": "a", "origin": "negative", "r": 0.3},
        # prompt b: a tie → 0.5; prompt c has no negative and is left out
        {"prompt_id": "b", "origin": "positive", "r": 0.2}, {"prompt_id": "b", "origin": "negative", "r": 0.2},
        {"prompt_id": "c", "origin": "positive", "r": 9.0},
        # prompt d: the negative wins → 0
        {"prompt_id": "d", "origin": "negative", "r": 1.0}, {"prompt_id": "d", "origin": "positive", "r": -1.0},
    ]
    assert per_prompt_p(rows, "r", "positive", "negative") == [0.5, 0.5, 0.0]
    assert per_prompt_p(rows, "r", "negative", "positive") == [0.5, 0.5, 1.0]
