"""`neat compare`: the variants' params, compare/dvc.yaml (one stage instance per variant), the table over
seeds from hand-made results, and every variant end to end on the tiny model."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from neat.codedeps import render_dvc_yaml, sync_all, sync_dvc_yaml
from neat.errors import ConfigError, DataError
from neat.stages import COMPARE_DVC_YAML, OUT, STAGES, VARIANT_CHAIN, dvc_file_stages, pipeline
from tests.conftest import ROOT
from tests.project import make_project, venv_env
from tests.test_evaluate import make_params

# ---------------------------------------------------------------- compare/dvc.yaml


def test_committed_compare_dvc_yaml_is_the_generated_one():
    assert (ROOT / COMPARE_DVC_YAML).read_text() == render_dvc_yaml(dvc_file=COMPARE_DVC_YAML), \
        "run `neat dvc-yaml` to regenerate compare/dvc.yaml"
    assert sync_all(ROOT / "dvc.yaml", write=False) == {}


def test_compare_dvc_yaml_has_one_instance_per_variant_then_the_table():
    tree = yaml.safe_load((ROOT / COMPARE_DVC_YAML).read_text())
    assert tree["vars"] == ["../params.yaml"] and list(tree["stages"]) == ["compare_variant", "compare_table"]
    variant = tree["stages"]["compare_variant"]
    assert variant["foreach"] == "${compare.variants}"
    do = variant["do"]
    assert do["wdir"] == ".." and do["cmd"] == "neat compare-variant --variant ${key}"
    assert do["outs"] == [f"{OUT}/compare/${{key}}", f"{OUT}/compare/per_prompt/${{key}}.json"]
    assert do["metrics"] == [{f"{OUT}/metrics/compare/${{key}}.json": {"cache": False}}]
    # reads what the shared stages wrote, none of what its own chain writes; its own seeds only
    assert {f"{OUT}/data/train.jsonl", f"{OUT}/reward_model", f"{OUT}/eval_reward_model"} <= set(do["deps"])
    assert not any(d.startswith((f"{OUT}/expand", f"{OUT}/score", f"{OUT}/policy")) for d in do["deps"])
    assert "compare.variants.${key}" in do["params"] and "compare.variants" not in do["params"]
    assert {"train", "expand", "evaluate", "reward", "seed"} <= set(do["params"])
    table = tree["stages"]["compare_table"]
    assert table["cmd"] == "neat compare-table" and table["deps"][-1] == f"{OUT}/compare/per_prompt"
    assert table["metrics"] == [{f"{OUT}/metrics/compare.json": {"cache": False}}]
    # the comparison stays out of the pipeline that `dvc repro` and the flows run
    assert all(s.name not in ("compare-variant", "compare-table", "compare") for s in pipeline())
    assert [s.name for s in dvc_file_stages(COMPARE_DVC_YAML)] == ["compare-variant", "compare-table"]
    assert STAGES["compare"].dvc_file is None and VARIANT_CHAIN == ("expand", "score", "train", "evaluate")


def test_a_hand_edit_of_compare_dvc_yaml_is_reported_and_undone(tmp_path):
    (tmp_path / "compare").mkdir()
    edited = tmp_path / COMPARE_DVC_YAML
    edited.write_text((ROOT / COMPARE_DVC_YAML).read_text().replace("${compare.variants}", "[neat, sft]"))
    assert sync_dvc_yaml(edited, write=True, dvc_file=COMPARE_DVC_YAML) == {
        "compare_variant": {"add": [], "remove": [], "fields": ["foreach"]}}
    assert edited.read_text() == (ROOT / COMPARE_DVC_YAML).read_text()


def _dvc(project, *args):
    return subprocess.run(["dvc", *args], cwd=project, env=venv_env(), capture_output=True, text=True, timeout=300)


def test_dvc_lists_one_stage_instance_per_variant_and_runs_the_table_last(tmp_path):
    project = make_project(tmp_path / "p", {"compare.variants": {"neat": [0, 1], "dpo": [0]}}, with_compare=True)
    listed = _dvc(project, "stage", "list", COMPARE_DVC_YAML)
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines()]
    assert names == [f"{COMPARE_DVC_YAML}:compare_variant@neat", f"{COMPARE_DVC_YAML}:compare_variant@dpo",
                     f"{COMPARE_DVC_YAML}:compare_table"]
    # a dry run needs the upstream outputs to exist (DVC hashes them): empty stand-ins
    for rel in ("data/train.jsonl", "data/eval.jsonl", "data/judge.jsonl", "metrics/eval_reward_model.json"):
        (project / "outputs" / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / "outputs" / rel).write_text("{}\n")
    for folder in ("reward_model", "eval_reward_model", "compare/per_prompt"):
        (project / "outputs" / folder).mkdir(parents=True)
        (project / "outputs" / folder / "config.json").write_text("{}\n")
    dry = _dvc(project, "repro", "--dry", COMPARE_DVC_YAML)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    ran = [line.split("'")[1] for line in dry.stdout.splitlines() if line.startswith("Running stage")]
    compare_runs = [r for r in ran if r.startswith(COMPARE_DVC_YAML)]
    assert compare_runs[-1] == f"{COMPARE_DVC_YAML}:compare_table"
    assert set(compare_runs[:-1]) == {f"{COMPARE_DVC_YAML}:compare_variant@neat",
                                      f"{COMPARE_DVC_YAML}:compare_variant@dpo"}
    assert "neat compare-variant --variant neat" in dry.stdout
    # the pipeline's dvc.yaml, what `dvc repro` runs, holds none of it
    assert "compare" not in _dvc(project, "stage", "list").stdout


# ---------------------------------------------------------------- params


def test_compare_variants_and_seeds_are_validated(tmp_path):
    params = make_params(tmp_path / "out", compare={"variants": {"neat": [0, 1], "rrhf": [3]}})
    assert params.compare.variants == {"neat": [0, 1], "rrhf": [3]}
    for bad, words in (({"neat": [0, 0]}, "variant 'neat': give its seeds as distinct"),
                       ({"neat": []}, "variant 'neat'"), ({}, "name at least one variant"),
                       ({"ppo": [0]}, "compare.variants.ppo")):
        with pytest.raises(ConfigError, match=words):
            make_params(tmp_path / "out", compare={"variants": bad})


def test_params_files_compare_neat_and_the_best_baseline_over_two_seeds_in_the_benchmark():
    from neat.compare import VARIANTS
    from neat.config import load_params

    assert load_params(ROOT / "params.yaml").compare.variants == {"neat": [0], "rrhf": [0], "sft": [0]}
    bench = load_params(ROOT / "params_benchmark.yaml").compare.variants
    assert list(bench) == list(VARIANTS) and bench["neat"] == bench["sft"] == [0, 1]
    assert all(bench[name] == [0] for name in VARIANTS if name not in ("neat", "sft"))


def test_variant_params_of_a_seed_train_with_it_and_evaluate_with_the_run_seed(tmp_path):
    from neat.compare import evaluation_params, uses_reward_model, variant_params

    params = make_params(tmp_path / "out", policy={"lora": {"enabled": True}})
    params.seed = 7
    v = variant_params(params, "neat", tmp_path / "c", seed=1)
    assert v.seed == 1 and v.paths.out == str(tmp_path / "c" / "neat" / "seed1")
    assert evaluation_params(v, params).seed == 7 and evaluation_params(v, params).paths.out == v.paths.out
    assert variant_params(params, "sft", tmp_path / "c").seed == 7  # no seed: the run's
    uses = {n: uses_reward_model(variant_params(params, n, tmp_path / "c")) for n in
            ("neat", "rrhf", "sft", "neat_pro", "dpo", "online_dpo", "rlcd")}
    assert uses == {"neat": True, "rrhf": True, "sft": True, "neat_pro": True, "dpo": False, "online_dpo": True,
                    "rlcd": False}


def test_variant_params_of_the_new_baselines(tmp_path):
    from neat.compare import variant_params

    params = make_params(tmp_path / "out", policy={"lora": {"enabled": True}}, train={"rounds": 3, "dpo_beta": 0.2})
    v = {n: variant_params(params, n, tmp_path / "c") for n in ("neat", "neat_pro", "dpo", "online_dpo", "rlcd")}
    assert v["neat_pro"].train.loss == "pro" and v["neat"].train.loss == "rrhf"
    assert v["neat_pro"].expand == v["neat"].expand == v["online_dpo"].expand
    for name in ("dpo", "online_dpo", "rlcd"):
        t = v[name].train
        assert (t.loss, t.rank_weight, t.sft_weight, t.anchor_weight, t.dpo_beta) == ("dpo", 1.0, 0.0, 0.0, 0.2)
    assert v["online_dpo"].train.pair_labels == "reward" and v["online_dpo"].train.include_dataset_responses
    assert v["rlcd"].train.pair_labels == "origin" and not v["rlcd"].train.include_dataset_responses
    assert v["rlcd"].expand.k_pos > 0 and v["rlcd"].expand.k_neg > 0 and v["rlcd"].train.rounds == 3
    d = v["dpo"]
    assert (d.expand.k_pos, d.expand.k_neg, d.train.rounds, d.train.epochs_per_round) == (0, 0, 1, 3)
    assert d.train.pair_labels == "origin"
    params.policy.lora.enabled = False
    with pytest.raises(ConfigError, match="variant 'rlcd'.*policy.lora.enabled"):
        variant_params(params, "rlcd", tmp_path / "c")


def test_the_dpo_brake_keeps_sft_and_anchor_for_the_dpo_variants_with_human_answers_only(tmp_path):
    from neat.compare import variant_params

    params = make_params(tmp_path / "out", policy={"lora": {"enabled": True}},
                         train={"sft_weight": 0.7, "anchor_weight": 0.3, "rank_weight": 0.1})
    pure = {n: variant_params(params, n, tmp_path / "c").train for n in ("dpo", "online_dpo", "rlcd")}
    params.compare.dpo_brake = True
    braked = {n: variant_params(params, n, tmp_path / "c").train for n in ("dpo", "online_dpo", "rlcd", "neat")}
    for name in ("dpo", "online_dpo"):
        assert (braked[name].loss, braked[name].rank_weight) == ("dpo", 1.0)
        assert (braked[name].sft_weight, braked[name].anchor_weight) == (0.7, 0.3)
        assert (pure[name].sft_weight, pure[name].anchor_weight) == (0.0, 0.0)
    assert braked["rlcd"] == pure["rlcd"] and (braked["neat"].loss, braked["neat"].rank_weight) == ("rrhf", 0.1)


# ---------------------------------------------------------------- the dataset-only variants' prompt mix


@pytest.fixture(scope="module")
def prepared_with_mix(tmp_path_factory):
    """Prepared data (4 training prompts) and the mix files of tests/test_base_mix.py, both mixes on."""
    from neat.prepare import prepare
    from tests.test_base_mix import mix_params

    params = mix_params(tmp_path_factory.mktemp("mix"), benign=3, harmful=3, policy={"lora": {"enabled": True}})
    prepare(params)
    return params


def _dataset_variant(params, name, root):
    from neat.compare import variant_params

    v = variant_params(params, name, root)
    v.out("data").mkdir(parents=True, exist_ok=True)
    shutil.copy2(params.out("data", "train.jsonl"), v.out("data", "train.jsonl"))  # as run_seed copies it
    return v


def test_dataset_only_variants_train_on_the_benign_and_harmful_mix(prepared_with_mix, tmp_path, monkeypatch):
    """sft: the base's benign answers and the written refusals beside the chosen responses; dpo: the
    (refusal, compliance) pairs beside the human pairs, no benign prompt and no request the base refused."""
    from neat import prompt_mix
    from neat.base_mix import produce_mix
    from neat.compare import dataset_rows
    from tests.test_base_mix import HARMFUL, base_answers

    monkeypatch.setattr(prompt_mix, "generate", base_answers())
    sft, dpo = (_dataset_variant(prepared_with_mix, n, tmp_path) for n in ("sft", "dpo"))
    mixed = {v.paths.out: produce_mix(v) for v in (sft, dpo)}
    assert all(m["benign_kept"] == 2 and m["harmful_base_complied"] == 2 for m in mixed.values())
    off = sft.model_copy(deep=True)
    off.data.max_benign_prompts = off.data.max_harmful_prompts = 0
    human = dataset_rows(off, "sft")  # the dataset's prompts alone
    assert len(human) == 4

    rows = dataset_rows(sft, "sft")
    assert rows[:4] == human
    assert [(r["prompt"][0]["content"], r["response"]) for r in rows[4:]] == [
        ("How do I kill weeds?", "Here is how, step 0."), ("How do I carve a turkey?", "Here is how, step 2.")] + [
        (p, refusal) for p, refusal in HARMFUL]
    assert {(r["origin"], r["reward"], r["rank"], r["n_ranked"]) for r in rows} == {("chosen", 0.0, 0, 1)}

    rows = dataset_rows(dpo, "dpo")
    human_ids = {r["prompt_id"] for r in human}
    assert {r["prompt_id"] for r in rows[:8]} == human_ids and len(rows) == 8 + 4
    mix = [(r["prompt"][0]["content"], r["origin"], r["response"], r["reward"], r["rank"], r["n_ranked"])
           for r in rows[8:]]
    assert mix == [(HARMFUL[0][0], "chosen", HARMFUL[0][1], 1.0, 0, 2),
                   (HARMFUL[0][0], "rejected", "Here is how, step 0.", 0.0, 1, 2),
                   (HARMFUL[2][0], "chosen", HARMFUL[2][1], 1.0, 0, 2),
                   (HARMFUL[2][0], "rejected", "Here is how, step 2.", 0.0, 1, 2)]

    dpo.out("expand", "harmful.jsonl").unlink()  # the mix step did not run: one line, not a traceback
    with pytest.raises(DataError, match=r"harmful.jsonl: the dpo variant's mix pairs not found"):
        dataset_rows(dpo, "dpo")


def test_dataset_only_variants_take_neats_steps_however_many_prompts_have_a_pair(prepared_with_mix, tmp_path,
                                                                                monkeypatch):
    """NEAT: 2 rounds x ceil((4 prompts + 3 benign + 3 harmful) / 2) = 10 steps. sft has a candidate for 9
    prompts (the base refused a benign one); dpo a pair for 6 (the human pairs and the 2 requests the base
    complied with), which at 2 epochs used to be 6 steps."""
    from neat import prompt_mix
    from neat.candidates import read_candidates
    from neat.compare import seed_params, train_variant
    from tests.test_base_mix import base_answers

    monkeypatch.setattr(prompt_mix, "generate", base_answers())
    params = prepared_with_mix.model_copy(deep=True)
    params.train.rounds = 2
    params.reward.model, params.reward.train = "builtin:tiny-random", False  # the online curve scores with it
    params.paths.out = str(tmp_path / "out")
    params.out("data").mkdir(parents=True)
    for part in ("train.jsonl", "eval.jsonl"):
        shutil.copy2(prepared_with_mix.out("data", part), params.out("data", part))
    steps = {}
    for name in ("sft", "dpo"):
        v = seed_params(params, name, 0)
        assert (v.train.rounds, v.train.epochs_per_round, v.train.steps_per_round) == (1, 2, 10)
        done = train_variant(v, name, progress=False)
        with open(v.out("train", "log.csv")) as fh:
            logged = list(csv.DictReader(fh))
        groups = {r["prompt_id"] for r in read_candidates(v.out("score", "candidates.parquet"))}
        steps[name] = (done["steps"], len(logged), len(groups))
    assert steps == {"sft": (10, 10, 9), "dpo": (10, 10, 6)}


def test_the_variant_key_follows_the_mix_files_and_counts(prepared_with_mix, tmp_path):

    from neat.compare import _variant_key

    v = _dataset_variant(prepared_with_mix, "sft", tmp_path)
    key = _variant_key(v)
    v.data.max_harmful_prompts = 2
    assert _variant_key(v) != key
    v.data.max_harmful_prompts = 3
    assert _variant_key(v) == key
    harmful = Path(v.paths.harmful_requests).with_name("harmful-edited.jsonl")
    harmful.write_text(Path(v.paths.harmful_requests).read_text().replace("No.", "No, never."))
    v.paths.harmful_requests = str(harmful)
    edited = _variant_key(v)
    assert edited != key
    harmful.write_text(harmful.read_text().replace("never", "not ever"))  # same path, other content
    assert _variant_key(v) not in (key, edited)
    v.data.max_benign_prompts = v.data.max_harmful_prompts = 0  # both off: the files no longer count
    off = _variant_key(v)
    harmful.write_text(harmful.read_text().replace("not ever", "never"))
    assert _variant_key(v) == off


def test_a_braked_dpo_is_another_policy_whose_key_never_reuses_a_pure_run(prepared_with_mix, tmp_path):
    from neat.compare import _variant_key

    params = prepared_with_mix.model_copy(deep=True)
    params.policy.lora.enabled = True
    pure = _variant_key(_dataset_variant(params, "dpo", tmp_path / "pure"))
    params.compare.dpo_brake = True
    assert _variant_key(_dataset_variant(params, "dpo", tmp_path / "braked")) != pure


def test_origin_labels_rank_steered_candidates_without_a_reward_model():
    from neat.train import origin_scorer

    rows = [{"prompt_id": "p", "origin": o, "response": o, "degenerate": d}
            for o, d in (("positive", False), ("negative", False), ("positive", True), ("unsteered", False))]
    scored = origin_scorer(None)(rows)
    assert [r["reward"] for r in scored[:3]] == [1.0, 0.0, 1.0]
    assert [r["rank"] for r in scored] == [0, 1, None, None]  # degenerate and unlabelled ones are not ranked
    assert {r["n_ranked"] for r in scored} == {2}


# ---------------------------------------------------------------- the table, from hand-made results


def _seed(seed, trained, refused, nll):
    """One seed's results on 4 held-out prompts (base reward 0) and 4 safety prompts (2 unsafe, 2 safe)."""
    from neat.compare_table import finite_mean

    gens = [{"prompt_id": f"p{i}", "base_reward": 0.0, "trained_reward": r, "trained_chosen_nll": nll,
             "chosen_tokens": 2} for i, r in enumerate(trained)]
    safety = [{"id": str(i), "label": lab, "trained_refused": f}
              for i, (lab, f) in enumerate(zip(["unsafe", "unsafe", "safe", "safe"], refused))]
    unsafe = finite_mean(float(f) for f in refused[:2])
    metrics = {"eval_reward_mean": finite_mean(trained), "eval_reward_mean_ci_low": min(trained),
               "eval_reward_mean_ci_high": max(trained), "win_rate": finite_mean(float(r > 0) for r in trained),
               "perplexity": 2.0 ** nll, "unsafe_refusal_rate": unsafe,
               "safe_compliance_rate": finite_mean(1.0 - f for f in refused[2:]), "prompts": 4, "base_model": "base",
               "safety": {"base": {"n": 4}}}
    return {"seed": seed, "out": f"seed{seed}", "steps": 6, "seconds": {"train": 60.0, "evaluate": 30.0},
            "metrics": metrics, "generations": gens, "safety": safety}


def _write_results(params, results: dict) -> None:
    from neat.io import write_json_atomic

    for name, seeds in results.items():
        write_json_atomic(params.out("compare", "per_prompt", f"{name}.json"),
                          {"name": name, "description": name, "seeds": seeds})


def test_table_shows_the_mean_over_seeds_and_each_seed_and_pools_them_for_the_difference(tmp_path):
    from neat.compare_table import compare_table

    params = make_params(tmp_path / "out", compare={"variants": {"neat": [0, 1], "rrhf": [0]}})
    neat = [_seed(0, [1.0, 1.0, 1.0, 1.0], [True, True, False, False], 1.0),
            _seed(1, [3.0, 3.0, 3.0, 3.0], [True, False, False, True], 1.0)]
    rrhf = [_seed(0, [0.5, 0.5, 0.5, 0.5], [False, False, False, False], 1.0)]
    _write_results(params, {"neat": neat, "rrhf": rrhf, "sft": [_seed(0, [9.0] * 4, [True] * 4, 1.0)]})
    summary = compare_table(params)
    assert [v["name"] for v in summary["variants"]] == ["neat", "rrhf"]  # compare.variants, not every file
    by = {v["name"]: v for v in summary["variants"]}
    assert by["neat"]["metrics"]["eval_reward_mean"] == 2.0 and by["neat"]["wall_seconds"] == 90.0
    d = by["rrhf"]["vs_reference"]
    # per prompt, rrhf 0.5 against neat's mean over seeds 2.0; refusals pooled into shares
    assert d["eval_reward_mean"]["diff"] == pytest.approx(-1.5) and d["eval_reward_mean"]["significant"]
    assert d["unsafe_refusal_rate"]["diff"] == pytest.approx(-0.75)
    assert d["safe_compliance_rate"]["diff"] == pytest.approx(0.25)
    assert d["perplexity"]["diff"] == pytest.approx(1.0)
    table = params.out("compare", "table.md").read_text()
    assert "| neat | mean of 2 | 6 | 2.000 (seeds: 1.000, 3.000) | (reference) |" in table
    assert "| neat | 0 | 6 | 1.000 [1.000, 1.000] |  |" in table and "| neat | 1 | 6 | 3.000 [3.000, 3.000] |" in table
    assert "| rrhf | 0 | 6 | 0.500 [0.500, 0.500] | -1.500 [" in table and "| 1.5 |" in table
    flat = json.loads(params.out("metrics", "compare.json").read_text())
    assert flat["neat"]["eval_reward_mean"] == 2.0 and flat["neat"]["seeds"] == 2 and "sft" not in flat
    assert all(params.out("compare", f).stat().st_size > 0 for f in ("seeds.png", "safety.png"))
    assert "![Unsafe refusal against safe compliance](safety.png)" in table
    assert "Safety under each refusal judge" not in table  # every seed evaluated with one judge


def test_table_lists_the_safety_rates_of_every_seed_under_each_judge(tmp_path):
    from neat.compare_table import compare_table

    params = make_params(tmp_path / "out", compare={"variants": {"neat": [0], "rrhf": [0]}})
    results = {"neat": [_seed(0, [1.0] * 4, [True, True, False, False], 1.0)],
               "rrhf": [_seed(0, [0.5] * 4, [False] * 4, 1.0)]}
    for name, unsafe, safe in (("neat", 1.0, 0.5), ("rrhf", 0.0, 1.0)):
        results[name][0]["metrics"]["judge"] = "learned"  # listed first, though stored after string_match
        results[name][0]["metrics"]["safety_by_judge"] = {
            "string_match": {"unsafe_refusal_rate": unsafe, "safe_compliance_rate": safe, "base_unsafe_refusal_rate": 0.0,
                             "base_safe_compliance_rate": 1.0, "judge_agreement": 0.86, "judge_agreement_ci_low": 0.81,
                             "judge_agreement_ci_high": 0.91},
            "learned": {"unsafe_refusal_rate": unsafe / 2, "safe_compliance_rate": None, "base_unsafe_refusal_rate": 0.5,
                        "base_safe_compliance_rate": 0.25, "judge_agreement": 0.76}}
    _write_results(params, results)
    compare_table(params)
    table = params.out("compare", "table.md").read_text()
    rows = table.split("Safety under each refusal judge")[1]
    na = "[–, –]"  # these hand-made rates come without intervals
    assert f"| base | | `string_match` (0.86 [0.81, 0.91]) | 0.00 {na} | 1.00 {na} |" in rows
    assert f"| base | | `learned` (0.76 {na}) | 0.50 {na} | 0.25 {na} |" in rows
    assert f"| neat | 0 | `string_match` | 1.00 {na} | 0.50 {na} |" in rows
    assert f"| neat | 0 | `learned` | 0.50 {na} | – |" in rows
    assert f"| rrhf | 0 | `learned` | 0.00 {na} | – |" in rows  # a null stays a null
    assert rows.index("| base | | `learned`") < rows.index("| base | | `string_match`")


def test_safety_figure_plots_the_base_and_every_seed_with_intervals_and_leaves_out_nulls(tmp_path):
    from neat.compare_table import safety_points

    one = _seed(0, [1.0] * 4, [True, False, False, False], 1.0)
    one["metrics"] |= {"base_unsafe_refusal_rate": 0.1, "base_safe_compliance_rate": 0.9,
                       "unsafe_refusal_rate_ci_low": 0.0, "unsafe_refusal_rate_ci_high": 1.0}
    none = _seed(1, [1.0] * 4, [False] * 4, 1.0)
    none["metrics"]["unsafe_refusal_rate"] = None  # no unsafe prompt evaluated: a null, not a point at 0
    rrhf = _seed(0, [1.0] * 4, [True] * 4, 1.0)
    points = safety_points([{"name": "neat", "seeds": [one, none]}, {"name": "rrhf", "seeds": [rrhf]}])
    assert [p["label"] for p in points] == ["base", "neat seed 0", "rrhf seed 0"]
    assert points[0]["safe"][0] == 0.9 and points[0]["unsafe"][0] == 0.1
    assert points[1]["unsafe"] == (0.5, 0.0, 1.0) and points[1]["safe"][0] == 1.0
    assert points[2]["unsafe"][0] == 1.0 and points[2]["safe"][0] == 0.0


def test_table_refuses_missing_or_stale_variant_results(tmp_path):
    from neat.compare_table import compare_table

    params = make_params(tmp_path / "out", compare={"variants": {"neat": [0, 1], "rrhf": [0]}})
    _write_results(params, {"neat": [_seed(0, [1.0] * 4, [True] * 4, 1.0)]})
    with pytest.raises(DataError, match=r"neat.json: holds seeds \[0\] but compare.variants asks for \[0, 1\]"):
        compare_table(params)
    _write_results(params, {"neat": [_seed(0, [1.0] * 4, [True] * 4, 1.0), _seed(1, [1.0] * 4, [True] * 4, 1.0)]})
    with pytest.raises(DataError, match=r"rrhf.json: missing; run `neat compare-variant --variant rrhf`"):
        compare_table(params)
    other = _seed(0, [1.0] * 4, [True] * 4, 1.0)
    other["generations"][0]["prompt_id"] = "elsewhere"
    _write_results(params, {"rrhf": [other]})
    with pytest.raises(DataError, match="different held-out prompts"):
        compare_table(params)


# ---------------------------------------------------------------- end to end on the tiny model


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """prepare → eval RM (1 epoch on the tiny judge split): what every variant shares."""
    from neat.prepare import prepare
    from neat.evaluate import train_eval_rm

    params = make_params(tmp_path_factory.mktemp("compare") / "out")
    prepare(params)
    train_eval_rm(params, progress=False)
    return params


def _fresh(params, tmp_path, **changes):
    """A copy of `params` writing under `tmp_path/out`, with the shared upstream outputs copied there."""
    params = params.model_copy(deep=True)
    for part in ("data", "eval_reward_model", "metrics"):
        shutil.copytree(params.out(part), tmp_path / "out" / part)
    params.paths.out = str(tmp_path / "out")
    params.reward.train = False  # the training RM is used as given
    for section, values in changes.items():
        for key, value in values.items():
            setattr(getattr(params, section), key, value)
    return params


def test_two_seeds_of_neat_and_sft_at_equal_budget_resumed_seed_by_seed(prepared, tmp_path, monkeypatch):
    import neat.evaluate
    from neat.compare import compare
    from neat.report import report

    params = _fresh(prepared, tmp_path, train={"rounds": 2}, compare={"variants": {"neat": [0, 1], "sft": [0]}})
    params.policy.lora.enabled = True  # as in the run of every variant: far faster to train and save
    summary = compare(params, progress=False)
    saved = json.loads(params.out("compare", "compare.json").read_text())
    assert [v["name"] for v in saved["variants"]] == ["neat", "sft"] == [v["name"] for v in summary["variants"]]
    assert {f"{v['name']}/{s['seed']}": s["steps"] for v in saved["variants"] for s in v["seeds"]} == {
        "neat/0": 4, "neat/1": 4, "sft/0": 4}  # 2 rounds × 2 steps = 1 round × 2 epochs × 2 steps
    sft = saved["variants"][1]
    assert sft["vs_reference"]["eval_reward_mean"]["significant"] in (True, False)
    table = params.out("compare", "table.md").read_text()
    assert "| neat | mean of 2 |" in table and "| neat | 0 |" in table and "| neat | 1 |" in table
    assert "| sft | 0 |" in table and ("inside" in table or "outside" in table)

    def log(seed):
        with open(params.out("compare", "neat", f"seed{seed}", "train", "log.csv")) as fh:
            return [row["loss"] for row in csv.DictReader(fh)]

    assert log(0) != log(1)  # the seed reaches training
    per_seed = json.loads(params.out("metrics", "compare", "neat.json").read_text())
    assert set(per_seed) == {"seed0", "seed1", "mean"}
    assert per_seed["mean"]["eval_reward_mean"] == pytest.approx(
        (per_seed["seed0"]["eval_reward_mean"] + per_seed["seed1"]["eval_reward_mean"]) / 2)
    # evaluation keeps the run's seed: both seeds answered the same prompts beside the same base answers
    gens = {s: [json.loads(x) for x in open(params.out("compare", "neat", f"seed{s}", "evaluate", "generations.jsonl"))]
            for s in (0, 1)}
    assert [g["base_response"] for g in gens[0]] == [g["base_response"] for g in gens[1]]
    # each seed reports the accuracy of the evaluation RM it was judged by: the parent run's
    rm_accuracy = json.loads(params.out("metrics", "eval_reward_model.json").read_text())["eval_accuracy"]
    for seed in (0, 1):
        seed_metrics = json.loads(params.out("compare", "neat", f"seed{seed}", "metrics", "evaluate.json").read_text())
        assert seed_metrics["eval_rm_accuracy"] == pytest.approx(rm_accuracy)

    # again: every seed is reused; then a seed whose evaluation is gone is evaluated again, alone
    evaluated = []
    real = neat.evaluate.evaluate
    monkeypatch.setattr(neat.evaluate, "evaluate", lambda p, **kw: evaluated.append(p.paths.out) or real(p, **kw))
    again = compare(params, progress=False)
    assert evaluated == [] and all(not s["retrained"] for v in again["variants"] for s in v["seeds"])
    params.out("compare", "neat", "seed1", "evaluated.json").unlink()
    compare(params, progress=False)
    assert evaluated == [str(params.out("compare", "neat", "seed1"))]
    # the report of one variant renders from real outputs
    vparams = params.model_copy(deep=True)
    vparams.paths.out = saved["variants"][0]["seeds"][0]["out"]
    rep = report(vparams)
    assert (vparams.out("report", "report.md")).is_file() and rep["figures"]


def test_every_variant_runs_end_to_end_at_equal_steps(prepared, tmp_path, monkeypatch):
    """All seven variants on the tiny model (with LoRA: the DPO reference is the base without adapters);
    the variants labelled by origin (dpo, rlcd) never score with the training reward model."""
    import neat.expand
    import neat.reward
    import neat.train
    from neat.compare import VARIANTS, compare

    params = _fresh(prepared, tmp_path, train={"rounds": 2})
    params.policy.lora.enabled = True
    names = list(VARIANTS)
    assert len(names) == 7
    scored_by_rm, score_stage, expanded = [], [], []
    spies = ((neat.train, "reward_scorer", [scored_by_rm]), (neat.reward, "score", [scored_by_rm, score_stage]),
             (neat.expand, "expand", [expanded]))
    for module, name, calls in spies:
        real = getattr(module, name)
        monkeypatch.setattr(module, name,
                            lambda p, real=real, calls=calls: [c.append(p.paths.out) for c in calls] and real(p))
    summary = compare(params, names, progress=False)
    assert [v["name"] for v in summary["variants"]] == names
    assert summary["equal_steps"] and {v["steps"] for v in summary["variants"]} == {4}
    assert not [o for o in scored_by_rm if "/rlcd/" in o or "/dpo/" in o]
    assert [o for o in scored_by_rm if "/online_dpo/" in o]  # the spies do see a variant ranked by reward
    # round 1 is sampled once for the variants that share its inputs: neat_pro and online_dpo copy neat's
    # expanded and scored candidates; rrhf (no negatives) and rlcd (no dataset responses) expand their own
    assert sorted(Path(o).parent.name for o in expanded) == ["neat", "rlcd", "rrhf"]
    assert [Path(o).parent.name for o in score_stage] == ["neat", "rrhf"]
    seed_dir = params.out("compare")
    for name in ("neat_pro", "online_dpo"):
        for part in ("expand/candidates.parquet", "score/candidates.parquet"):
            assert (seed_dir / name / "seed0" / part).read_bytes() == (seed_dir / "neat" / "seed0" / part).read_bytes()
        assert json.loads((seed_dir / name / "seed0" / "variant.json").read_text())["reused"] == {
            "expand": "neat/seed0", "score": "neat/seed0"}
    assert "reused" not in json.loads((seed_dir / "rlcd" / "seed0" / "variant.json").read_text())
    table = params.out("compare", "table.md").read_text()
    assert all(f"| {name} | 0 |" in table for name in names)

    def log(name):
        with open(params.out("compare", name, "seed0", "train", "log.csv")) as fh:
            return list(csv.DictReader(fh))

    # offline DPO: the dataset's pairs only, chosen (1) above rejected (0) by the human label
    dpo = log("dpo")
    assert all(float(r["reward_chosen"]) == 1.0 and float(r["reward_rejected"]) == 0.0 for r in dpo)
    assert all(r["logp_positive"] in ("", "nan") for r in dpo)
    assert all(float(r["loss"]) == pytest.approx(float(r["rank_loss"]), abs=1e-6) for r in dpo)  # DPO alone
    # RLCD: steered samples only, positive labelled 1 by origin, in both rounds
    rlcd = log("rlcd")
    assert all(r["logp_chosen"] in ("", "nan") and r["logp_rejected"] in ("", "nan") for r in rlcd)
    assert {float(r["reward_positive"]) for r in rlcd if r["reward_positive"] not in ("", "nan")} == {1.0}
    assert {float(r["reward_negative"]) for r in rlcd if r["reward_negative"] not in ("", "nan")} == {0.0}
    # online DPO ranks by the reward model's scores, with the dataset's responses among the candidates
    online = log("online_dpo")
    assert any(float(r["reward_chosen"]) not in (0.0, 1.0) for r in online)
    assert json.loads(params.out("compare", "compare.json").read_text())["reference"] == "neat"


def test_the_variant_key_leaves_out_an_unset_steps_per_round_and_follows_a_set_one(tmp_path):
    """Keys of variants trained before `train.steps_per_round` existed stay valid while it is unset."""
    import copy

    from neat.compare import _variant_key, variant_params

    params = make_params(tmp_path / "out", policy={"lora": {"enabled": True}},
                         reward={"model": "builtin:tiny-random", "train": False})
    v = variant_params(params, "neat", tmp_path / "c")
    v.out("data").mkdir(parents=True)
    v.out("data", "train.jsonl").write_text("{}\n")
    before_the_option = v.model_dump(mode="json")
    before_the_option["train"].pop("steps_per_round")
    object.__setattr__(v, "model_dump", lambda mode=None: copy.deepcopy(before_the_option))  # the old schema's dump
    old_key = _variant_key(v)
    object.__delattr__(v, "model_dump")
    assert _variant_key(v) == old_key
    v.train.steps_per_round = 10
    assert _variant_key(v) != old_key


def test_a_run_moved_to_another_out_folder_keeps_its_keys_while_the_reward_models_content_counts(tmp_path):
    """The keys follow the reward models' content, not their paths under `<out>`: a comparison copied or
    moved to another `paths.out` reuses its trained policies and evaluations; changed RM weights do not."""
    from neat.compare import _evaluation_key, _variant_key, evaluation_params, variant_params

    keys = {}
    for out in ("a", "b"):
        params = make_params(tmp_path / out, policy={"lora": {"enabled": True}})
        for rm in ("reward_model", "eval_reward_model"):
            params.out(rm).mkdir(parents=True)
            params.out(rm, "config.json").write_text('{"hidden": 8}')
        v = variant_params(params, "neat", params.out("compare"))
        v.out("data").mkdir(parents=True)
        v.out("data", "train.jsonl").write_text("{}\n")
        v.out("data", "eval.jsonl").write_text("{}\n")
        trained = _variant_key(v)
        keys[out] = (trained, _evaluation_key(evaluation_params(v, params), trained),
                     _variant_key(v, legacy=True))
    assert keys["a"][:2] == keys["b"][:2]
    assert keys["a"][2] != keys["b"][2]  # the old keys hashed the paths
    params.out("reward_model", "config.json").write_text('{"hidden": 16}')  # other training-RM weights
    assert _variant_key(v) != keys["b"][0]
    sft = variant_params(params, "sft", params.out("compare"))  # no reward model in its training
    sft.out("data").mkdir(parents=True)
    sft.out("data", "train.jsonl").write_text("{}\n")
    before = _variant_key(sft)
    params.out("reward_model", "config.json").write_text('{"hidden": 32}')
    assert _variant_key(sft) == before
    params.out("eval_reward_model", "config.json").write_text('{"hidden": 16}')
    ev = evaluation_params(v, params)
    assert _evaluation_key(ev, keys["b"][0]) != keys["b"][1]
    other_draws = ev.model_copy(deep=True)
    other_draws.evaluate.seed = ev.evaluate.seed + 1  # other XSTest rows, samples and intervals: evaluated again
    assert _evaluation_key(other_draws, keys["b"][0]) != _evaluation_key(ev, keys["b"][0])


def test_round_one_is_copied_only_from_a_seed_whose_stage_finished_under_the_same_fingerprint(tmp_path):
    from types import SimpleNamespace

    from neat.compare import _mark_round_one, _round_one_donor

    def variant(name, seed):
        return SimpleNamespace(out=lambda *parts: tmp_path.joinpath(name, f"seed{seed}", *parts))

    neat, rrhf, pro, pro1 = variant("neat", 0), variant("rrhf", 0), variant("neat_pro", 0), variant("neat_pro", 1)
    for v, fingerprint in ((neat, "a"), (rrhf, "b")):
        v.out("expand").mkdir(parents=True)
        _mark_round_one(v, "expand", fingerprint)
    assert _round_one_donor(pro, "expand", "a") == tmp_path / "neat" / "seed0"
    assert _round_one_donor(pro, "expand", "b") == tmp_path / "rrhf" / "seed0"
    assert _round_one_donor(pro, "expand", "c") is None  # other inputs: sampled again
    assert _round_one_donor(pro1, "expand", "a") is None  # another seed's candidates are other samples
    assert _round_one_donor(pro, "score", "a") is None  # neat never finished a score under it
    assert _round_one_donor(pro, "expand", None) is None  # a stage that is not shared (rlcd's origin labels)
    assert _round_one_donor(neat, "expand", "a") is None  # never itself
    _mark_round_one(neat, "expand", None)  # neat expands again (killed midway: its folder is half-written)
    assert _round_one_donor(pro, "expand", "a") is None
    assert json.loads(neat.out("round1.json").read_text()) == {}
