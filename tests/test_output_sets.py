"""All-or-nothing output sets and one stage per checkout (issue 12): a failure, a kill at any point of
a multi-file write, or a full disk leaves either the previous set or the new one, never a mix."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from neat.cli import main
from neat.output_sets import output_set, recover
from tests.conftest import ROOT

SET = ("data/train.jsonl", "data/eval.jsonl", "data/judge.jsonl", "data/stats.json")
DEMO = ROOT / "data" / "demo" / "hh_demo.jsonl"


def _project(tmp_path: Path) -> Path:
    from neat.workspace import set_params_in_file

    shutil.copy2(ROOT / "params.yaml", tmp_path / "params.yaml")
    set_params_in_file(tmp_path / "params.yaml", {"paths.data": str(DEMO), "paths.out": str(tmp_path / "out"),
                                                  "paths.checkpoints": str(tmp_path / "ck")})
    assert main(["prepare", "--params", str(tmp_path / "params.yaml")]) == 0
    half = tmp_path / "half.jsonl"  # other data: a different new set
    half.write_text("".join(DEMO.read_text().splitlines(keepends=True)[:120]))
    return half


def _digest(out: Path) -> dict:
    return {rel: hashlib.md5((out / rel).read_bytes()).hexdigest() for rel in SET}


def _leftovers(root: Path) -> list[str]:
    return [p.name for p in root.rglob(".*") if ".tmp" in p.name or ".neat-commit-" in p.name]


def test_a_failure_while_staging_changes_nothing(tmp_path):
    (tmp_path / "a.txt").write_text("old a")
    (tmp_path / "b.txt").write_text("old b")
    with pytest.raises(RuntimeError, match="boom"):
        with output_set(tmp_path, "demo") as staged:
            staged(tmp_path / "a.txt").write_text("new a")
            raise RuntimeError("boom")
    assert (tmp_path / "a.txt").read_text() == "old a" and not _leftovers(tmp_path)


def test_a_commit_cut_between_renames_is_rolled_forward(tmp_path, monkeypatch):
    for name in "abc":
        (tmp_path / f"{name}.txt").write_text(f"old {name}")
    real, state = os.replace, {"cut": True}

    def cut(src, dst):
        if str(dst).endswith("b.txt") and state["cut"]:
            raise OSError("the machine went away")  # every rename fails after a.txt moved in
        real(src, dst)

    monkeypatch.setattr(os, "replace", cut)
    with pytest.raises(OSError, match="went away"):
        with output_set(tmp_path, "demo") as staged:
            for name in "abc":
                staged(tmp_path / f"{name}.txt").write_text(f"new {name}")
    assert (tmp_path / "a.txt").read_text() == "new a" and (tmp_path / "b.txt").read_text() == "old b"
    assert (tmp_path / ".neat-commit-demo.json").exists()  # the journal survives: the commit point was passed
    state["cut"] = False
    assert recover(tmp_path) == [".neat-commit-demo.json"]
    assert [(tmp_path / f"{n}.txt").read_text() for n in "abc"] == ["new a", "new b", "new c"]
    assert not _leftovers(tmp_path)


KILLER = """
import os, signal, sys
real, n, k = os.replace, [0], int(sys.argv[1])
def replace(src, dst):
    real(src, dst)
    n[0] += 1
    if n[0] == k:
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
from neat.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("k", range(1, 10))
def test_a_kill_after_any_rename_leaves_the_old_set_or_the_new_one(tmp_path, k):
    half = _project(tmp_path)
    out = tmp_path / "out"
    old = _digest(out)
    params = str(tmp_path / "params.yaml")
    proc = subprocess.run([sys.executable, "-c", KILLER, str(k), "prepare", "--params", params, "-S",
                           f"paths.data={half}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    recover(out)  # what the next stage does first
    after = _digest(out)
    subprocess.run([sys.executable, "-m", "neat.cli", "prepare", "--params", params, "-S", f"paths.data={half}"],
                   cwd=ROOT, capture_output=True, check=True, timeout=300)
    new = _digest(out)
    assert old != new
    assert after in (old, new), (k, proc.returncode)
    assert proc.returncode == -signal.SIGKILL  # it really was killed mid-stage (k is below the renames' count)


def test_a_full_disk_leaves_the_previous_outputs_intact(tmp_path):
    """A real write failure: RLIMIT_FSIZE makes every write past 4 KB fail with EFBIG, as a full disk would."""
    _project(tmp_path)
    out = tmp_path / "out"
    old = _digest(out)

    def limit():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    proc = subprocess.run([sys.executable, "-m", "neat.cli", "prepare", "--params", str(tmp_path / "params.yaml"),
                           "-S", "data.split_salt=other"], cwd=ROOT, capture_output=True, text=True,
                          preexec_fn=limit, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("neat: error:") and "disk full" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert _digest(out) == old and not _leftovers(tmp_path)


def test_a_second_stage_in_the_same_checkout_is_refused(tmp_path, capsys):
    _project(tmp_path)
    capsys.readouterr()
    old = _digest(tmp_path / "out")
    with open(tmp_path / ".neat-run.lock", "a+") as held:  # another `neat` holds the checkout
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["prepare", "--params", str(tmp_path / "params.yaml"), "-S", "data.split_salt=x"]) == 2
    err = capsys.readouterr().err
    assert "another neat run is using this checkout" in err and err.count("\n") == 1
    assert _digest(tmp_path / "out") == old
    assert main(["prepare", "--params", str(tmp_path / "params.yaml"), "-S", "data.split_salt=x"]) == 0


def test_a_stage_run_by_a_flow_shares_the_flows_lock(tmp_path, capsys):
    """The flow holds the checkout lock while `dvc repro` runs `neat <stage>`: the stage runs under it."""
    from neat.workspace import project_lock

    _project(tmp_path)
    with project_lock(tmp_path):
        assert main(["prepare", "--params", str(tmp_path / "params.yaml"), "-S", "data.split_salt=y"]) == 0
    assert "NEAT_RUN_LOCK_HELD" not in os.environ
