"""`dvc plots show` on the project's dvc.yaml: each plot once, each against the right axis."""

from __future__ import annotations

import json
import shutil
import subprocess

from neat.training.records import LOG_COLUMNS
from tests.conftest import ROOT
from tests.project import venv_env


def write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")


def test_each_plot_is_drawn_once_against_its_axis(tmp_path):
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    env = venv_env()
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=tmp_path, env=env, check=True)
    out = tmp_path / "outputs"
    write_csv(out / "train/log.csv", LOG_COLUMNS, [[1, step] + [0.5] * (len(LOG_COLUMNS) - 2) for step in (1, 2, 3)])
    # the columns neat.report writes
    write_csv(out / "plots/safety_by_type.csv",
              ["type", "label", "n", "base_refusal_rate", "base_ci_low", "base_ci_high", "trained_refusal_rate",
               "trained_ci_low", "trained_ci_high"],
              [["violence", "unsafe", 3, 0.0, 0, 0.5, 1.0, 0.5, 1], ["homonyms", "safe", 2, 0.5, 0, 1, 0.0, 0, 0.5]])
    write_csv(out / "plots/reward_by_origin.csv", ["round", "origin", "n", "mean"], [[1, "chosen", 3, 0.5]])
    write_csv(out / "evaluate/rewards.csv", ["base_reward", "trained_reward"], [[0.1, 0.2]])
    proc = subprocess.run(["dvc", "plots", "show", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert not shown.get("errors")
    plots = {name: entries[0]["content"] for name, entries in shown["data"].items()}

    def sources(content):
        return {json.dumps(v, sort_keys=True) for v in content["data"]["values"]}

    log_rows = [name for name, c in plots.items() if any('"sft_loss"' in s for s in sources(c))]
    assert log_rows == ["training"]  # log.csv once, not once per declaration
    training = plots["training"]
    assert training["encoding"]["x"]["field"] == "step"
    assert {v["field"] for v in training["data"]["values"]} >= {"loss", "reward_chosen", "reward_negative"}
    safety = plots["outputs/plots/safety_by_type.csv"]
    assert safety["mark"]["type"] == "bar"
    assert safety["encoding"]["y"]["field"] == "type" and safety["encoding"]["x"]["field"] == "trained_refusal_rate"
    assert len(plots) == 4
