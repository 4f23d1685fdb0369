"""The stage manifest (neat/stages.py): the one place the chain is written; dvc.yaml, the flows, the CLI
and the tests derive from it."""

from __future__ import annotations

import yaml

from neat.codedeps import render_dvc_yaml, sync_dvc_yaml
from neat.stages import OUT, STAGES, output_path, pipeline, stages_before, uncached_outputs
from tests.conftest import ROOT


def test_committed_dvc_yaml_is_the_generated_one():
    assert (ROOT / "dvc.yaml").read_text() == render_dvc_yaml(), "run `neat dvc-yaml` to regenerate dvc.yaml"
    assert sync_dvc_yaml(ROOT / "dvc.yaml", write=False) == {}


def test_manifest_stages_run_after_what_they_read():
    produced: set[str] = set()
    for stage in pipeline():
        for dep in stage.deps:
            if dep.startswith(OUT):
                assert any(dep == p or dep.startswith(p + "/") for p in produced), (stage.name, dep)
        produced |= {output_path(e) for e in stage.produces()}


def test_dvc_yaml_stages_and_commands_follow_the_manifest():
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(spec) == [s.dvc_name for s in pipeline()]
    assert [v["cmd"] for v in spec.values()] == [s.cmd for s in pipeline()]
    assert spec["train"]["cmd"] == "neat train --resume" and STAGES["train"].options == {"resume": True}
    assert "compare" not in spec and all(s.name != "compare" for s in pipeline())


def test_a_hand_edit_of_dvc_yaml_is_reported_and_undone(tmp_path):
    edited = tmp_path / "dvc.yaml"
    edited.write_text((ROOT / "dvc.yaml").read_text().replace("      - reward\n", "      - reward.lr\n", 1))
    changes = sync_dvc_yaml(edited, write=True)
    assert changes == {"train_rm": {"add": [], "remove": [], "fields": ["params"]}}
    assert edited.read_text() == (ROOT / "dvc.yaml").read_text()
    edited.write_text("# a comment of mine\n" + edited.read_text())
    assert list(sync_dvc_yaml(edited, write=True)) == ["dvc.yaml"]  # the text alone differed
    assert edited.read_text() == (ROOT / "dvc.yaml").read_text()


def test_stages_before_and_uncached_outputs_come_from_the_manifest():
    assert [s.name for s in stages_before("train")] == ["prepare", "train-rm", "expand", "score"]
    uncached = uncached_outputs()
    assert f"{OUT}/metrics/train.json" in uncached and f"{OUT}/report" in uncached
    assert f"{OUT}/policy" not in uncached
