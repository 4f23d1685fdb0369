"""The `neat` command line: data inspection, params printing, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

from neat.cli import main
from tests.conftest import ROOT


def test_data_inspect_on_shared_slice(hh_slice, capsys):
    assert main(["data", "inspect", str(hh_slice), "--tokenizer", "builtin:tiny-random", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["rows_read"] == 1000 and stats["rows_kept"] / stats["rows_read"] >= 0.99
    assert sum(stats["skipped"].values()) == 1000 - stats["rows_kept"]
    assert 40 < stats["prompt_tokens"]["p50"] < stats["prompt_tokens"]["p90"] <= stats["prompt_tokens"]["max"]
    assert stats["chosen_tokens"]["p50"] > 5


def test_data_inspect_human_readable(capsys):
    assert main(["data", "inspect", str(ROOT / "data/demo/hh_demo.jsonl"), "--no-tokens"]) == 0
    out = capsys.readouterr().out
    assert "rows read:   202" in out and "skipped:     none" in out


def test_params_prints_overrides(capsys):
    assert main(["params", "--params", str(ROOT / "params.yaml"), "-S", "train.lr=0.5"]) == 0
    assert "lr: 0.5" in capsys.readouterr().out


def test_errors_are_one_line_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "neat.cli", "data", "inspect", str(tmp_path / "nope.jsonl"),
                           "--no-tokens"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"neat: error: {tmp_path / 'nope.jsonl'}: data file not found"
    debug = subprocess.run([sys.executable, "-m", "neat.cli", "data", "inspect", str(tmp_path / "nope.jsonl"),
                            "--no-tokens", "--debug"], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


import pytest  # noqa: E402


@pytest.mark.parametrize("exc, code, words", [
    (KeyError("prompt"), 3, "internal error (KeyError"),
    (MemoryError(), 2, "too large to hold in memory"),
    (RecursionError(), 2, "nested too deeply"),
    (PermissionError(13, "Permission denied", "/data/x.jsonl"), 2, "/data/x.jsonl: permission denied"),
    (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), 2, "lone UTF-16 surrogate"),
    (ValueError("x" * 1_000_000), 2, "more characters"),
])
def test_every_exception_is_one_capped_line_with_its_exit_code(monkeypatch, capsys, tmp_path, exc, code, words):
    import shutil

    import neat.stages

    def boom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(neat.stages, "run_stage", boom)
    params = shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")  # its own checkout: no lock shared with a run
    assert main(["report", "--params", str(params)]) == code
    err = capsys.readouterr().err
    assert err.startswith("neat: error:") and err.count("\n") == 1 and words in err and len(err) < 1000
    assert "params.yaml" in err or "/data/x.jsonl" in err
    if code == 3:
        assert "--debug" in err
