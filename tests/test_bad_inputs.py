"""Bad input ends with one clear line and loses nothing (issue 7).

The battery itself (cases and checks) lives in benchmarks/bad_inputs.py, which also prints the
summary table; here every case is one test, a few are repeated through the installed `neat` command
(exit code, no traceback on stderr), `--debug` shows the traceback, and a failing stage under
`dvc repro` leaves the DVC cache and dvc.lock as they were.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.project import make_project, venv_env

sys.path.insert(0, str(ROOT))
from benchmarks.bad_inputs import CASES, Ctx, format_table, make_base, run_case, snapshot  # noqa: E402

RESULTS: dict[str, object] = {}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    base = make_base(tmp_path_factory.mktemp("bad-inputs") / "base")
    yield base
    if RESULTS:  # the closing note's table: count of bad inputs tried and how each ended
        results = [RESULTS[c.id] for c in CASES if c.id in RESULTS]
        table = format_table(results)
        summary = tmp_path_factory.getbasetemp() / "bad_inputs_summary.json"
        summary.write_text(json.dumps([r.__dict__ | {"ok": r.ok} for r in results], indent=2))
        print("\n" + table + f"\n(summary: {summary})")


def test_battery_covers_the_issue():
    assert len(CASES) >= 120
    assert {"data", "params", "override", "security", "safety", "refusal", "model", "registry", "stage",
            "output"} <= {c.group for c in CASES}
    ids = {c.id for c in CASES}
    assert len(ids) == len(CASES)
    for needed in ("data-truncated-gzip", "data-not-json", "data-utf16", "data-missing-fields", "data-wrong-types",
                   "data-empty-file", "data-50mb-row-only", "data-prompt-longer-than-context",
                   "params-unknown-key", "params-wrong-type", "params-out-of-range", "params-missing-file",
                   "params-invalid-yaml", "policy-missing-path", "reward-wrong-architecture",
                   "policy-gguf-not-gguf", "policy-hub-offline",
                   # issue 12
                   "data-fifo", "data-dev-zero", "data-symlink-loop", "data-gzip-bomb", "data-deep-nesting-only",
                   "data-huge-int-among-good", "data-lone-surrogate-only", "data-hash-in-path", "params-directory",
                   "params-empty", "params-duplicate-section", "params-alias-bomb", "override-inf-weight",
                   "override-remote-code-policy", "safety-fifo", "refusal-one-label", "evaluate-no-eval-rm",
                   "registry-traversal-history", "registry-pointer-not-json", "registry-rollback-unpublished",
                   "disk-full-prepare", "lock-held", "out-is-a-file",
                   # issue 12, second part
                   "candidates-no-prompt-column", "generations-truncated", "log-csv-no-rank-loss",
                   "evaluate-json-truncated", "online-json-truncated", "online-json-dev-without-answers", "policy-config-hidden-zero", "policy-config-layers-billion",
                   "reward-config-vocab-negative", "policy-gguf-damaged-metadata", "registry-s3-no-credentials",
                   "registry-s3-unreachable", "registry-rollback-lock-held"):
        assert needed in ids, needed


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, base, tmp_path):
    result = run_case(case, base, tmp_path / case.id)
    RESULTS[case.id] = result
    assert result.ok, f"{case.id}: {result.problems} ({result.ended})"
    if case.exit:
        assert "\n" not in result.message and result.message


# ---------------------------------------------------------------- the installed command


def _neat(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["neat", *argv], cwd=cwd, env=venv_env(), capture_output=True, text=True, timeout=300)


SUBPROCESS_CASES = ["data-truncated-gzip", "params-invalid-yaml", "params-unknown-key", "policy-gguf-not-gguf",
                    "data-utf16", "data-fifo", "params-alias-bomb", "data-deep-nesting-only", "registry-traversal-history",
                    "evaluate-json-truncated", "policy-config-layers-billion"]


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_bad_input_through_the_neat_command(case_id, base, tmp_path):
    import shutil

    from neat.workspace import set_params_in_file

    case = next(c for c in CASES if c.id == case_id)
    shutil.copytree(base, tmp_path, dirs_exist_ok=True)
    ctx = Ctx(tmp_path)
    set_params_in_file(ctx.params, {"paths.out": str(ctx.out), "paths.checkpoints": str(tmp_path / "ck")})
    argv = case.setup(ctx)
    if "--params" not in argv:
        argv += ["--params", str(ctx.params)]
    before = snapshot(ctx.out)
    proc = _neat(argv, tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("neat: error:")]
    assert len(lines) == 1 and all(s.lower() in lines[0].lower() for s in case.says), proc.stderr
    assert snapshot(ctx.out) == before

    debug = _neat(argv + ["--debug"], tmp_path)  # --debug shows where it came from
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_failing_stage_under_dvc_leaves_cache_and_lock_intact(tmp_path):
    """`dvc repro` of a stage whose input turned bad: one error line, cache and dvc.lock unchanged,
    and `dvc checkout` brings back the last good outputs."""
    import gzip

    from neat.workspace import set_params_in_file

    project = make_project(tmp_path / "project")
    env = venv_env()
    ok = subprocess.run(["dvc", "repro", "prepare"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    good = {rel: (project / rel).read_bytes() for rel in ("outputs/data/train.jsonl", "outputs/data/eval.jsonl")}
    lock = (project / "dvc.lock").read_text()
    cache = snapshot(project / ".dvc" / "cache")

    blob = gzip.compress((ROOT / "data/demo/hh_demo.jsonl").read_bytes())
    (project / "data/bad.jsonl.gz").write_bytes(blob[: len(blob) // 2])
    set_params_in_file(project / "params.yaml", {"paths.data": "data/bad.jsonl.gz"})
    bad = subprocess.run(["dvc", "repro", "prepare"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    text = bad.stdout + bad.stderr
    assert bad.returncode != 0
    assert "neat: error: data/bad.jsonl.gz: corrupt or truncated gzip file" in text
    assert "Traceback" not in text
    assert (project / "dvc.lock").read_text() == lock
    assert snapshot(project / ".dvc" / "cache") == cache
    assert not [p for p in (project / "outputs").rglob(".*") if ".tmp" in p.name]

    set_params_in_file(project / "params.yaml", {"paths.data": "data/demo/hh_demo.jsonl"})
    subprocess.run(["dvc", "checkout", "prepare"], cwd=project, env=env, capture_output=True, text=True, check=True)
    assert {rel: (project / rel).read_bytes() for rel in good} == good
