"""dvc.yaml's code deps are the stages' import closures, so a code change never leaves outputs stale."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from neat.codedeps import import_closure, stage_code_deps, sync_dvc_yaml
from tests.conftest import ROOT
from tests.project import make_project, venv_env


def test_closure_follows_lazy_relative_and_from_package_imports(tmp_path):
    pkg = tmp_path / "neat"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import os\n\ndef f():\n    from neat import b  # lazy, inside a function\n")
    (pkg / "b.py").write_text("from .sub.c import thing\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("thing = 1\n")
    (pkg / "unused.py").write_text("")
    assert import_closure(["neat.a"], tmp_path) == ["neat/__init__.py", "neat/a.py", "neat/b.py",
                                                    "neat/sub/__init__.py", "neat/sub/c.py"]


def test_real_closures_include_lazily_imported_modules():
    evaluate = stage_code_deps("evaluate")
    # neat.evaluate imports models, reward and logprobs only inside functions
    assert {"neat/models.py", "neat/reward.py", "neat/logprobs.py", "neat/config.py"} <= set(evaluate)
    assert "neat/cli.py" not in evaluate and "neat/stages.py" not in evaluate


def test_dvc_yaml_code_deps_are_exactly_the_import_closures():
    assert sync_dvc_yaml(ROOT / "dvc.yaml", write=False) == {}, "run `neat dvc-deps` to update dvc.yaml"


def test_dvc_deps_rewrites_a_stale_file_and_keeps_data_deps(tmp_path):
    stale = tmp_path / "dvc.yaml"
    stale.write_text((ROOT / "dvc.yaml").read_text().replace("      - neat/models.py\n", ""))
    changes = sync_dvc_yaml(stale, write=True)
    assert changes and all(c == {"add": ["neat/models.py"], "remove": []} for c in changes.values())
    assert yaml.safe_load(stale.read_text()) == yaml.safe_load((ROOT / "dvc.yaml").read_text())


def test_report_declares_every_metrics_file_it_reads():
    source = (ROOT / "neat/report.py").read_text()
    read = set(re.findall(r'\("metrics", "(\w+\.json)"\)', source))
    assert {"evaluate.json", "reward_model.json", "eval_reward_model.json", "train.json"} <= read
    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["report"]["deps"]
    assert {f"${{paths.out}}/metrics/{name}" for name in read} <= set(deps)


def _fake_outputs(project: Path) -> None:
    """Every out/metric/plot of dvc.yaml as a small file (or folder), so `dvc commit` can record a lock."""
    out = yaml.safe_load((project / "params.yaml").read_text())["paths"]["out"]
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    for spec in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in spec.get(kind, []):
                path = project / (entry if isinstance(entry, str) else next(iter(entry))).replace("${paths.out}", out)
                if path.suffix:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("{}\n" if path.suffix == ".json" else "x\n")
                else:
                    path.mkdir(parents=True, exist_ok=True)
                    (path / "file.txt").write_text("x\n")


def _changed_stages(project: Path) -> set[str]:
    proc = subprocess.run(["dvc", "status", "--json"], cwd=project, env=venv_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return {name.split(":")[-1] for name in json.loads(proc.stdout or "{}")}


def test_touching_a_shared_module_marks_every_stage_using_it_changed(tmp_path):
    project = make_project(tmp_path / "p")
    _fake_outputs(project)
    commit = subprocess.run(["dvc", "commit", "-f", "-q"], cwd=project, env=venv_env(), capture_output=True, text=True)
    assert commit.returncode == 0, commit.stderr
    assert _changed_stages(project) == set()

    with open(project / "neat/models.py", "a") as fh:
        fh.write("\n# a change to the model loader\n")
    changed = _changed_stages(project)
    # every stage whose code reaches neat.models, including through lazy imports — not just train_rm and expand;
    # not report, which reads the candidates through neat.candidates and loads no model
    assert changed == {"train_rm", "expand", "score", "train", "train_eval_rm", "evaluate"}
    assert changed == {s for s, spec in yaml.safe_load((project / "dvc.yaml").read_text())["stages"].items()
                       if "neat/models.py" in spec["deps"]}
