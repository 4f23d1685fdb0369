"""`neat --quiet` / `--log-level`: stage messages go through `logging` to stderr; stdout keeps the JSON summary."""

from __future__ import annotations

import ast
import json
import logging
import os
import shutil

import pytest

from neat.cli import main
from neat.io import ShardStore
from neat.workspace import set_params_in_file
from tests.conftest import ROOT


@pytest.fixture
def params(tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "0")  # --quiet turns bars off in os.environ; restored after the test
    shutil.copy2(ROOT / "params.yaml", tmp_path / "params.yaml")
    set_params_in_file(tmp_path / "params.yaml", {"paths.data": str(ROOT / "data/demo/hh_demo.jsonl"),
                                                  "paths.out": str(tmp_path / "out")})
    return str(tmp_path / "params.yaml")


def _run(capsys, *argv) -> str:
    assert main(list(argv)) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["rows_kept"] > 0  # the summary, alone on stdout
    return err


def test_stage_progress_is_logged_to_stderr_and_quiet_silences_it(params, capsys):
    err = _run(capsys, "prepare", "--params", params)
    assert err.startswith("neat prepare: done in ") and err.count("\n") == 1
    assert _run(capsys, "--quiet", "prepare", "--params", params) == ""
    assert os.environ["TQDM_DISABLE"] == "1"  # and no progress bars
    assert _run(capsys, "--log-level", "warning", "prepare", "--params", params) == ""
    assert "done in" in _run(capsys, "--log-level", "DEBUG", "prepare", "--params", params)


def test_quiet_and_a_log_level_together_are_refused(params, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--quiet", "--log-level", "DEBUG", "prepare", "--params", params])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_resuming_shards_is_an_info_message(tmp_path, caplog):
    store = ShardStore(tmp_path, "key", 3, label="expand")
    store.save(0, {"x": 1})
    with caplog.at_level(logging.INFO, logger="neat"):
        assert ShardStore(tmp_path, "key", 3, label="expand").announce() == 1
    assert [r.getMessage() for r in caplog.records if r.name == "neat.io"] == [
        f"neat expand: resuming: 1 of 3 shards done (in {tmp_path / 'key'})"]


def test_no_stage_module_prints():
    """Messages go through logging; only the CLI writes stdout (the JSON summaries) itself."""
    for path in sorted((ROOT / "neat").rglob("*.py")):
        if path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                pytest.fail(f"{path.relative_to(ROOT)}:{node.lineno} prints; use logging.getLogger(__name__)")
