"""`paths.data: hub:<dataset id>`: loaded at the pinned `data.hub_revision`, and a params-only source under DVC."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import types

import yaml

from neat.codedeps import DATA_DEP, sync_dvc_yaml
from neat.config import load_params
from neat.prepare import prepare
from tests.conftest import ROOT
from tests.project import make_project, venv_env

HH_ROW = {"chosen": "\n\nHuman: How do I boil an egg?\n\nAssistant: Simmer it for nine minutes.",
          "rejected": "\n\nHuman: How do I boil an egg?\n\nAssistant: No."}


def test_prepare_loads_the_pinned_hub_revision(tmp_path, monkeypatch):
    calls = []

    def load_dataset(dataset_id, **kwargs):
        calls.append((dataset_id, kwargs))
        return [HH_ROW] * 3

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    params = load_params(ROOT / "params.yaml", {"paths.data": "hub:org/prefs", "data.hub_split": "test",
                                                "data.hub_revision": "0123abcd", "paths.out": str(tmp_path / "out")})
    stats = prepare(params)
    assert calls == [("org/prefs", {"split": "test", "revision": "0123abcd"})]
    assert stats["rows_read"] == 3


def _prepare_deps(dvc_yaml) -> list[str]:
    return yaml.safe_load(dvc_yaml.read_text())["stages"]["prepare"]["deps"]


def test_dvc_deps_tracks_a_hub_source_by_params_and_a_file_as_a_dep(tmp_path):
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    params = (ROOT / "params.yaml").read_text()
    data_line = next(ln for ln in params.splitlines() if ln.strip().startswith("data: "))
    (tmp_path / "params.yaml").write_text(params.replace(data_line, "  data: hub:Anthropic/hh-rlhf"))
    assert sync_dvc_yaml(tmp_path / "dvc.yaml") == {"prepare": {"add": [], "remove": [DATA_DEP]}}
    stage = yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"]["prepare"]
    assert DATA_DEP not in stage["deps"] and {"paths.data", "data"} <= set(stage["params"])

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")  # back to a local file: its dep returns
    assert sync_dvc_yaml(tmp_path / "dvc.yaml") == {"prepare": {"add": [DATA_DEP], "remove": []}}
    assert (tmp_path / "dvc.yaml").read_text() == (ROOT / "dvc.yaml").read_text()


def _dvc(project, *args):
    env = venv_env({"HF_DATASETS_CACHE": str(project.parent / "hf-datasets")})
    return subprocess.run(["dvc", *args], cwd=project, env=env, capture_output=True, text=True)


def test_dvc_repro_with_a_hub_source(tmp_path):
    # a local dataset directory stands in for the hub: `datasets.load_dataset("standin/hh")` reads it
    project = make_project(tmp_path / "p", {"paths.data": "hub:standin/hh"})
    (project / "standin" / "hh").mkdir(parents=True)
    shutil.copy(project / "data/demo/hh_demo.jsonl", project / "standin/hh/train.jsonl")

    # `prepare` only: on a fresh project a dry run of later stages stops at their missing inputs anyway
    before = _dvc(project, "repro", "--dry", "prepare")
    assert before.returncode != 0 and "hub:standin/hh" in before.stderr  # dvc.yaml still names it as a file
    deps = subprocess.run(["neat", "dvc-deps"], cwd=project, env=venv_env(), capture_output=True, text=True)
    assert deps.returncode == 0, deps.stderr
    assert DATA_DEP not in _prepare_deps(project / "dvc.yaml")

    dry = _dvc(project, "repro", "--dry", "prepare")
    assert dry.returncode == 0, dry.stderr
    repro = _dvc(project, "repro", "prepare")
    assert repro.returncode == 0, repro.stdout + repro.stderr
    assert (project / "outputs/data/train.jsonl").stat().st_size > 0
    assert _dvc(project, "status", "prepare").stdout.strip() == "Data and pipelines are up to date."

    params = project / "params.yaml"  # the pinned revision is what DVC watches for a hub source
    params.write_text(params.read_text().replace("hub_revision: null", "hub_revision: 0123abcd"))
    status = _dvc(project, "status", "prepare")
    assert re.search(r"modified:\s+data$", status.stdout, re.M), status.stdout  # the `data` params section
