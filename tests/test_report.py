"""The run report from hand-made pipeline outputs (no model): report.md, PNG figures, plot data."""

from __future__ import annotations

import csv
import re

import pytest

from neat.encoding import ORIGINS
from neat.errors import DataError
from tests.conftest import make_test_params


def make_params(tmp_path):
    return make_test_params({"paths": {"out": str(tmp_path / "out")}, "evaluate": {"bootstrap": 100}})


def write_upstream(params):
    """Scored candidates (2 rounds), a training log, and evaluation files written by neat.evaluate's writers."""
    from neat.evaluate import evaluation_metrics, write_jsonl_atomic, write_rewards_plot_data
    from neat.encoding import ORIGINS
    from neat.candidates import write_candidates
    from neat.io import write_json_atomic
    from neat.training.records import write_log

    rows = []
    for rnd, path in ((1, params.out("score", "candidates.parquet")),
                      (2, params.out("train", "rounds", "round_2.parquet"))):
        rows = [{"prompt_id": f"p{i}", "prompt": [{"role": "user", "content": f"q{i}"}], "origin": o,
                 "response": f"{o} {i}", "round": rnd, "reward": float(k - 1.5 + 0.1 * i + 0.01 * rnd), "rank": k}
                for i in range(5) for k, o in enumerate(ORIGINS)]
        rows[0]["reward"] = float("nan")  # an unranked candidate is left out of the figures
        write_candidates(path, rows)
    log = [{"round": 1 + (s > 3), "step": s, "loss": 2.0 / s, "rank_loss": 1.0 / s, "sft_loss": 1.0 / s, "lr": 1e-4,
            "tokens_per_s": 100.0, "grad_norm": 1.0, **{f"logp_{o}": -2.0 + 0.1 * s * (o == "chosen") for o in ORIGINS},
            **{f"reward_{o}": float(ORIGINS.index(o)) for o in ORIGINS}} for s in range(1, 7)]
    write_log(params.out("train", "log.csv"), log)
    records = [{"prompt_id": f"e{i}", "prompt": [{"role": "user", "content": f"How do I do thing {i}? a|b <x>"}],
                "chosen": "Like so.", "base_response": f"base answer {i}", "trained_response": f"trained answer {i}",
                "base_reward": 0.1 * i, "trained_reward": 0.1 * i + (0.3 if i % 3 else -0.2), "base_refused": False,
                "trained_refused": i == 0, "base_samples": [], "trained_samples": [], "base_chosen_nll": 4.0,
                "trained_chosen_nll": 3.5, "chosen_tokens": 2, "winner": "trained"} for i in range(8)]
    safety = [{"id": str(i), "prompt": f"safety prompt {i}", "type": t, "label": lab, "base_response": "Sure.",
               "trained_response": "I'm sorry, I can't." if lab == "unsafe" else "Sure.", "base_refused": False,
               "trained_refused": lab == "unsafe", "base_refused_by": {"string_match": False, "learned": i == 0},
               "trained_refused_by": {"string_match": lab == "unsafe", "learned": True}}
              for i, (t, lab) in enumerate([("homonyms", "safe"), ("homonyms", "safe"), ("violence", "unsafe"),
                                            ("violence", "unsafe"), ("drugs", "unsafe")])]
    metrics = evaluation_metrics(records, safety, n_resamples=100, seed=0)
    metrics.update(tag="trained", base_model="builtin:tiny-random", policy="out/policy", judge="string_match",
                   eval_reward_model="out/eval_reward_model", safety_prompts="demo.csv", n_samples=0,
                   max_new_tokens=8, bootstrap=100, seconds=3.5, judge_agreement=0.861, judge_agreement_ci_low=0.81,
                   judge_agreement_ci_high=0.91, judge_agreement_n=177, judge_labels="labels/heldout.jsonl",
                   arithmetic={"native_bf16_cpu": True, "device": "cpu", "generation": "bfloat16",
                               "perplexity": "bfloat16 autocast"})
    metrics["safety_by_judge"]["string_match"].update(judge_agreement=0.861, judge_agreement_ci_low=0.81,
                                                      judge_agreement_ci_high=0.91)
    metrics["safety_by_judge"]["learned"].update(judge_agreement=0.76, judge_agreement_ci_low=0.70,
                                                 judge_agreement_ci_high=0.82)
    write_jsonl_atomic(params.out("evaluate", "generations.jsonl"), records)
    write_jsonl_atomic(params.out("evaluate", "safety.jsonl"), safety)
    write_rewards_plot_data(params.out("evaluate", "rewards.csv"), records)
    write_json_atomic(params.out("metrics", "evaluate.json"), metrics)
    write_json_atomic(params.out("metrics", "eval_reward_model.json"),
                      {"eval_accuracy": 0.61, "eval_accuracy_before": 0.5, "judge_pairs": 30, "seconds": 9.0})
    write_json_atomic(params.out("metrics", "train.json"), {"steps": 6, "seconds": 40.0, "seconds_by_phase": {
        "sampling": 21.5, "dev_probes": 4.0, "optimizer_steps": 12.3}, "arithmetic": {
        "native_bf16_cpu": True, "device": "cpu", "generation": "bfloat16", "policy_training": "float32"}})
    params.out("compare").mkdir(parents=True, exist_ok=True)
    params.out("compare", "table.md").write_text("| variant | steps |\n|---|---|\n| neat | 6 |\n")
    return metrics


def test_report_writes_markdown_figures_and_plot_data(tmp_path):
    from neat.report import CAVEAT, report

    params = make_params(tmp_path)
    metrics = write_upstream(params)
    summary = report(params)
    folder = params.out("report")
    md = (folder / "report.md").read_text()
    assert summary["report"] == str(folder / "report.md")
    assert set(summary["figures"]) == {"eval_rewards.png", "safety.png", "reward_by_origin.png", "training.png"}
    # every figure exists, is a PNG, and is linked by a relative path (opens offline)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(links) == sorted(summary["figures"])
    for name in links:
        assert not name.startswith(("/", "http")) and (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert CAVEAT in md and "weaker than a real held-out judge" in md
    for section in ("Held-out evaluation", "Safety benchmark", "Reward by candidate origin", "Training",
                    "Example generations", "Method comparison", "Reward models and wall time"):
        assert section in summary["sections"]
    assert f"{metrics['win_rate']:.3f}" in md and "| neat | 6 |" in md
    assert "agrees with people on 0.86 [0.81, 0.91] of 177 hand-labelled" in md
    assert "a\\|b &lt;x&gt;" in md  # table cells are escaped
    # the same answers under each judge: learned calls every trained answer a refusal, base only on a safe prompt
    assert ("| `string_match` | 0.86 [0.81, 0.91] | 0.00 [0.00, 0.00] | 1.00 [1.00, 1.00] | 1.00 [1.00, 1.00] "
            "| 1.00 [1.00, 1.00] |") in md
    assert "| `learned` | 0.76 [0.70, 0.82] | 0.00 [0.00, 0.00] | 1.00 [1.00, 1.00] | 0.50 [" in md
    assert "| 0.00 [0.00, 0.00] |" in md.split("| `learned` |")[1].splitlines()[0]
    assert md.index("| `string_match` |") < md.index("| `learned` |")  # the evaluation's own judge first
    assert "| wall time of `train` | 40.0 s |" in md
    assert "/ optimizer steps and checkpoints | 21.5 s / 4.0 s / 12.3 s |" in md  # where train's time went
    assert ("| arithmetic of these figures | generation: bfloat16; policy training: "
            "float32; perplexity: bfloat16 autocast (CPU with native bf16: yes) |") in md
    with (folder / "reward_by_origin.csv").open() as fh:
        by_origin = list(csv.DictReader(fh))
    assert {(r["round"], r["origin"]) for r in by_origin} == {(str(r), o) for r in (1, 2)
                                                              for o in ORIGINS}
    chosen1 = next(r for r in by_origin if r["round"] == "1" and r["origin"] == "chosen")
    assert chosen1["n"] == "4"  # the NaN reward is left out
    assert params.out("plots", "reward_by_origin.csv").read_text() == (folder / "reward_by_origin.csv").read_text()
    with (folder / "safety_by_type.csv").open() as fh:
        types = {r["type"]: r for r in csv.DictReader(fh)}
    assert float(types["violence"]["trained_refusal_rate"]) == 1.0 and float(types["violence"]["base_refusal_rate"]) == 0.0


def test_report_with_partial_outputs_and_with_none(tmp_path):
    from neat.report import report

    params = make_params(tmp_path)
    with pytest.raises(DataError, match="nothing to report"):
        report(params)
    write_upstream(params)
    for path in (params.out("metrics", "evaluate.json"), params.out("evaluate", "generations.jsonl"),
                 params.out("evaluate", "safety.jsonl")):
        path.unlink()
    summary = report(params)
    assert summary["figures"] == ["reward_by_origin.png", "training.png"]
    assert "Held-out evaluation" not in summary["sections"]


def test_report_shows_the_online_curve_and_degeneration(tmp_path):
    """train/online.json (as the trainer writes it) + the evaluation's online curve → a section, a figure,
    one table row per round and one after training."""
    from neat.io import write_json_atomic
    from neat.report import report

    params = make_params(tmp_path)
    metrics = write_upstream(params)
    answers = [{"prompt_id": "d0", "prompt": [{"role": "user", "content": "q"}], "response": "a", "reward": 0.1}]
    loop = "I'm sorry. I'm sorry. I'm sorry. I'm sorry."
    looping = answers + [dict(answers[0], prompt_id=f"d{i}", response=loop) for i in (1, 2, 3)]
    online = [{"round": 1, "p_positive_over_negative": 0.62, "p_positive_over_negative_ci": [0.5, 0.75],
               "reward_by_origin": {"chosen": 0.3, "negative": -0.2},
               "dev": {"reward_mean": 0.11, "reward_mean_ci": [0.05, 0.17], "repetition_rate": 0.75, "distinct_2": 0.8,
                       "answers": looping}},
              {"round": 2, "p_positive_over_negative": 0.71, "reward_by_origin": {},
               "dev": {"reward_mean": 0.17, "repetition_rate": 0.0, "distinct_2": 0.9, "answers": answers}},
              {"round": 3, "dev": {"reward_mean": 0.23, "repetition_rate": 0.0, "distinct_2": 0.9, "answers": answers}}]
    write_json_atomic(params.out("train", "online.json"), online)
    write_json_atomic(params.out("metrics", "evaluate.json"), metrics | {
        "online_dev_eval_reward": [0.01, 0.02, 0.04], "online_dev_eval_reward_ci": [[0.0, 0.02], None, [0.03, 0.05]],
        "online_dev_eval_reward_gain": {"gain": 0.03, "ci_low": -0.01, "ci_high": 0.06, "prompts": 4}})
    summary = report(params)
    md = params.out("report", "report.md").read_text()
    assert "Online curve" in summary["sections"] and "online.png" in summary["figures"]
    row1 = next(line for line in md.splitlines() if line.startswith("| 1 | 0.62 [0.50, 0.75] |"))
    # every figure with its 95 % interval; the repetition rate's over the probe's four answers (3 loops)
    assert "0.30" in row1 and "-0.20" in row1
    assert "| 0.110 [0.050, 0.170] | 0.010 [0.000, 0.020] | 0.75 [0.25, 1.00] |" in row1
    assert "| 2 | 0.71 [–, –] |" in md  # an interval not recorded is shown as missing, not left out
    assert "| after training |" in md and "0.040 [0.030, 0.050]" in md
    assert "paired over the same 4 dev prompts: evaluation RM 0.030 [-0.010, 0.060]." in md
    assert f"{metrics['changed_share']:.2f}" in md  # held-out answers changed from base
    assert "loop_probes" not in md  # no probes, no line about them
    online[0] |= {"greedy_loops": 3, "prompts": 40}
    online[1] |= {"greedy_loops": 1, "prompts": 40}
    write_json_atomic(params.out("train", "online.json"), online)
    report(params)
    md = params.out("report", "report.md").read_text()
    assert "round 1 3 of 40, round 2 1 of 40." in md
    write_json_atomic(params.out("train", "online.json"), {"not": "a list"})
    with pytest.raises(DataError, match="online.json"):
        report(params)


def test_html_report_is_self_contained(tmp_path):
    """report.html beside report.md: every figure inlined as base64, nothing linked outside the file,
    tables rendered, raw HTML from generations shown as text."""
    import base64

    from neat.report import report

    params = make_params(tmp_path)
    write_upstream(params)
    summary = report(params)
    folder = params.out("report")
    page = (folder / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page and "<h2>Safety benchmark</h2>" in page
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == len(summary["figures"]) == 4
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    inlined = {base64.b64decode(src.split(",", 1)[1]) for src in sources}
    assert inlined == {(folder / name).read_bytes() for name in summary["figures"]}
    assert not re.search(r'(src|href)="(?!data:)', page)  # no link that could break when the file moves
    assert "<x>" not in page  # the generation's '<x>' stays text


def test_inline_images_for_the_prefect_artifact(tmp_path):
    from neat.report import inline_images

    (tmp_path / "fig.png").write_bytes(b"\x89PNG\r\n\x1a\nbytes")
    text = inline_images("a ![Fig](fig.png) b ![Gone](missing.png) ![Out](../up.png)", tmp_path)
    assert "![Fig](data:image/png;base64,iVBORw0KGgpieXRlcw==)" in text
    assert "![Gone](missing.png)" in text and "![Out](../up.png)" in text
