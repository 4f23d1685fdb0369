"""The flows against a real Prefect server on 127.0.0.1: streamed stage output, failure hooks and events,
typed and described parameters, deployments that queue."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest
import yaml

from tests.conftest import ROOT
from tests.project import make_project, start_prefect_server, venv_env, stop_process


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env, proc = start_prefect_server(tmp_path_factory.mktemp("prefect"))
    yield env
    stop_process(proc)


def api(env, path, body=None):
    request = urllib.request.Request(env["PREFECT_API_URL"] + path, method="POST" if body is not None else "GET",
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


def log_messages(env) -> list[str]:
    return [entry["message"] for entry in api(env, "/logs/filter", {"limit": 200, "sort": "TIMESTAMP_ASC"})]


def events(env, prefix) -> list[dict]:
    page = api(env, "/events/filter", {"filter": {"event": {"prefix": [prefix]}}, "limit": 50})
    return page["events"]


def start_flow(env, tmp_path, code):
    script = tmp_path / "run_flow.py"
    script.write_text(textwrap.dedent(code))
    # PYTHONPATH: the script imports this checkout's flows and neat, not an installed copy
    return subprocess.Popen([sys.executable, str(script)], cwd=ROOT, env=venv_env({**env, "PYTHONPATH": str(ROOT)}),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_stage_output_reaches_the_flow_run_log_while_the_stage_runs(server, tmp_path):
    release = tmp_path / "release"
    fake_dvc = tmp_path / "dvc"  # stands in for `dvc repro`: prints, then waits until the test has seen it
    fake_dvc.write_text(f"#!/bin/sh\necho \"step 1 of 2, bars off: $TQDM_DISABLE\"\n"
                        f"while [ ! -f {release} ]; do sleep 0.2; done\necho 'step 2 of 2'\n")
    fake_dvc.chmod(0o755)
    proc = start_flow(server, tmp_path, f"""
        import flows.pipeline as fp
        from prefect import flow

        fp._bin = lambda name: {str(fake_dvc)!r}

        @flow(name="stream-check")
        def check():
            return fp.pipeline_stage_task("train", {str(tmp_path)!r})

        print(check())
    """)
    try:
        deadline = time.monotonic() + 120
        while not any("step 1 of 2" in m for m in log_messages(server)):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the stage's first line never reached the flow-run log"
            time.sleep(1)
        messages = log_messages(server)
        assert proc.poll() is None and not any("step 2 of 2" in m for m in messages)  # still running
        assert any("step 1 of 2, bars off: 1" in m for m in messages)  # TQDM_DISABLE set for the stage
        release.touch()
        assert proc.wait(timeout=120) == 0, proc.stdout.read()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    for _ in range(20):  # the last lines arrive with the final log flush
        if any("step 2 of 2" in m for m in log_messages(server)):
            break
        time.sleep(0.5)
    else:
        pytest.fail("the stage's last line is missing from the flow-run log")


def test_failed_run_is_logged_and_announced_and_promotion_emits_an_event(server, tmp_path):
    proc = start_flow(server, tmp_path, f"""
        import flows.pipeline as fp
        from prefect import flow

        @flow(name="gate-check")
        def gate():
            fp.announce_gate({{"promote": True, "reason": "no production model yet", "version": "v7",
                               "candidate": "v7"}})

        gate()
        try:
            fp.neat_pipeline(project_dir={str(tmp_path / "no-such-project")!r})
        except Exception as exc:
            print("failed as expected:", type(exc).__name__)
    """)
    out, _ = proc.communicate(timeout=180)
    assert "failed as expected" in out, out[-3000:]
    assert any(m.startswith("neat-pipeline failed:") for m in log_messages(server))
    deadline = time.monotonic() + 30
    while not (events(server, "neat.flow.failed") and events(server, "neat.model.promoted")):
        assert time.monotonic() < deadline, "events not received"
        time.sleep(1)
    failed = events(server, "neat.flow.failed")[0]
    assert failed["payload"]["flow"] == "neat-pipeline" and failed["payload"]["state"] == "Failed"
    promoted = events(server, "neat.model.promoted")[0]
    assert promoted["resource"]["prefect.resource.id"] == "neat.registry.version.v7"
    assert promoted["payload"]["reason"] == "no production model yet"


def test_flow_parameters_are_typed_and_described():
    from prefect.utilities.callables import parameter_schema

    from flows.pipeline import neat_pipeline, neat_retrain

    for flow_ in (neat_pipeline, neat_retrain):
        schema = parameter_schema(flow_.fn).model_dump()
        props, definitions = schema["properties"], schema["definitions"]
        assert all(p.get("description") for p in props.values()), props
        # overrides: a form of params.yaml's sections, each key typed and described, not a free JSON object
        ref = props["overrides"]["anyOf"][0]["$ref"].rsplit("/", 1)[-1]
        sections = definitions[ref]["properties"]
        assert {"train", "policy", "expand", "data"} <= set(sections)
        train = definitions[sections["train"]["anyOf"][0]["$ref"].rsplit("/", 1)[-1]]["properties"]
        assert train["lr"]["anyOf"][0]["type"] == "number" and "`train.lr`" in train["lr"]["description"]
        assert train["schedule"]["anyOf"][0]["enum"] == ["constant", "linear", "cosine"]
        assert "transformers.get_scheduler" in train["schedule"]["description"]
        assert all(field.get("description") for d in definitions.values() if d["title"].endswith("Overrides")
                   for field in d["properties"].values())
    props = neat_pipeline.parameters.model_dump()["properties"]
    assert props["stages"]["anyOf"][0]["type"] == "array"
    assert props["use_dvc"]["type"] == "boolean" and "dvc repro" in props["use_dvc"]["description"]


def test_overrides_form_and_dotted_keys_give_the_same_params_yaml_edits():
    from pydantic import ValidationError

    from flows.options import ParamOverrides
    from flows.pipeline import _dotted

    form = ParamOverrides.model_validate({"train": {"lr": 1e-5}, "policy": {"lora": {"r": 4}}})
    dotted = ParamOverrides.model_validate({"train.lr": 1e-5, "policy.lora.r": 4})
    assert form.dotted() == dotted.dotted() == {"policy.lora.r": 4, "train.lr": 1e-5}
    assert _dotted({"train.lr": 1e-5}) == {"train.lr": 1e-5} and _dotted(ParamOverrides()) is None
    # what a deployment run passes: the server checks it against the schema, the flow validates it into the model
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import ValidationError as SchemaError, validate

    from flows.pipeline import neat_pipeline

    schema = parameter_schema(neat_pipeline.fn).model_dump_for_openapi()
    for overrides in ({"train.sft_weight": 0.25}, {"train": {"sft_weight": 0.25}}):
        validate({"overrides": overrides}, schema, raise_on_error=True)
        got = neat_pipeline.validate_parameters({"overrides": overrides})["overrides"]
        assert isinstance(got, ParamOverrides) and got.dotted() == {"train.sft_weight": 0.25}
    with pytest.raises(SchemaError):
        validate({"overrides": {"train": {"sft_weight": "heavy"}}}, schema, raise_on_error=True)
    for bad, says in (({"train": {"nope": 1}}, "nope"), ({"train.lr": "fast"}, "lr"),
                      ({"registry.uri": None}, "null is no override")):
        with pytest.raises(ValidationError, match=says):
            ParamOverrides.model_validate(bad)


def test_deployments_queue_a_second_run(server, tmp_path):
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    for spec in deployments:
        assert spec["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}, spec["name"]
    assert "strict=False" not in (ROOT / "flows" / "pipeline.py").read_text()
    project = make_project(tmp_path / "p")
    env = venv_env(server)
    for cmd in (["prefect", "work-pool", "create", "neat-pool", "--type", "process"],
                ["prefect", "work-pool", "set-concurrency-limit", "neat-pool", "1"],
                ["prefect", "--no-prompt", "deploy", "--all"]):
        proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for name in ("neat-pipeline/on-demand", "neat-retrain/scheduled-retrain"):
        deployment = api(server, f"/deployments/name/{name}")
        assert deployment["concurrency_options"]["collision_strategy"] == "ENQUEUE", deployment
        assert deployment["global_concurrency_limit"]["limit"] == 1
    assert api(server, "/work_pools/neat-pool")["concurrency_limit"] == 1
