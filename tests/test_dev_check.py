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
