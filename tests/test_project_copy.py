"""The test projects are built from the project's git-tracked files, never from the user's working tree;
what the documented commands write is git-ignored."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from neat.config import load_params
from tests.conftest import ROOT
from tests.project import git, make_project


def test_test_projects_hold_tracked_files_only(tmp_path):
    src = tmp_path / "checkout"
    src.mkdir()
    shutil.copy2(ROOT / "params.yaml", src / "params.yaml")
    (src / "neat").mkdir()
    (src / "neat" / "kept.py").write_text("x = 1\n")
    git("init", "-q", "-b", "main", cwd=src)
    git("add", "-A", cwd=src)
    git("-c", "user.email=t@e", "-c", "user.name=t", "commit", "-qm", "tracked", cwd=src)
    # what a user's checkout holds after the README's commands, or by accident: untracked, not ignored
    (src / "outputs-benchmark" / "compare").mkdir(parents=True)
    (src / "outputs-benchmark" / "compare" / "policy.safetensors").write_bytes(b"\0" * 1024)
    (src / "notes.txt").write_text("scratch\n")

    dest = make_project(tmp_path / "project", source=src)
    files = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file() and ".git" not in p.parts}
    assert files == {"params.yaml", "neat/kept.py"}


def _ignored(path: str) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0


def test_what_documented_commands_write_is_git_ignored():
    for params_file in sorted(ROOT.glob("params*.yaml")):
        params = load_params(params_file)
        for folder in (params.paths.checkpoints, params.paths.cache):
            assert _ignored(f"{folder}/x"), (params_file.name, folder)
        if params_file.name != "params.yaml":  # not dvc.yaml's outputs: DVC writes no .gitignore for them
            assert _ignored(f"{params.paths.out}/x"), (params_file.name, params.paths.out)
    assert _ignored(".neat-run.lock") and _ignored(".dvc/tmp/x") and _ignored(".dvc/cache/x")

