"""Prefect flows: the NEAT pipeline and scheduled retraining.

Each task runs one stage of the manifest (neat/stages.py, which dvc.yaml is generated from), in its
order: through DVC by default (`dvc repro --single-item <stage>`, so unchanged stages are reused from the
DVC cache and dvc.lock records what ran), or in-process with `use_dvc=False`. The flows hold no pipeline
logic of their own: the gate is `neat.promotion`, incoming data `neat.retrain`. A failed stage is retried
unless its exit code (recorded by `neat` itself, see neat.failures.write_outcome) or its exception says
the input is at fault.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import yaml

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.options import ParamOverrides
from neat.codedeps import sync_dvc_yaml
from neat.config import load_params
from neat.failures import OUTCOME_ENV, is_bad_input, read_outcome
from neat.io import write_text_atomic
from neat.promotion import promote_if_better
from neat.s3_errors import dvc_failure_message, redact
from neat.stages import OUT, pipeline, uncached_outputs
from neat.workspace import project_lock, revision, run, set_params_in_file

# One run at a time: the deployments in prefect.yaml carry `concurrency_limit: {limit: 1, collision_strategy:
# ENQUEUE}` and the work pool has `prefect work-pool set-concurrency-limit neat-pool 1`, so a second run waits
# (AwaitingConcurrencySlot) instead of racing; the checkout's file lock guards runs started by hand.


class StageFailed(RuntimeError):
    def __init__(self, stage: str, code: int, tail: str, transient: bool):
        super().__init__(f"stage '{stage}' failed (exit {code}): {tail}")
        self.transient = transient


def _retry_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except StageFailed as exc:
        return exc.transient
    except Exception as exc:  # an in-process stage: bad input is not retried, as `neat`'s exit 2 is not
        return not is_bad_input(error=exc)
    return False


def _bin(name: str) -> str:
    """A tool from the interpreter's environment (a worker may not have the venv on PATH)."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("TQDM_DISABLE", "1")  # a flow-run log is no terminal: no progress bars redrawn into it
    env["PYTHONUNBUFFERED"] = "1"  # each line reaches the flow-run log when printed, not at exit
    return env


def stream(cmd: list[str], cwd: str | os.PathLike, env: dict, on_line: Callable[[str], None],
           keep: int = 5000) -> tuple[int, str]:
    """Run `cmd`, handing each line of its output (stdout and stderr together) to `on_line` as it is
    printed; returns the exit code and the last `keep` lines."""
    import collections
    import subprocess

    lines: collections.deque[str] = collections.deque(maxlen=keep)
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1, errors="replace") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:  # text mode: a bare "\r" (a progress bar's redraw) also ends a line
            line = line.rstrip("\n")
            if line.strip():
                lines.append(line)
                on_line(line)
        code = proc.wait()
    return code, "\n".join(lines)


def repro_stage(dvc_name: str, project_dir: str | os.PathLike, on_line: Callable[[str], None]) -> dict:
    """`dvc repro --single-item <dvc_name>`, its output handed to `on_line` as it is printed. A failure is a
    StageFailed, transient unless the `neat` command DVC ran exited with its bad-input code (read from the
    outcome record `neat` writes, not from the output); a stage DVC did not run was reused from its cache."""
    # inside the project's own (ignored) .neat/: a worker killed mid-stage leaves its empty folder there, not in /tmp
    scratch = Path(project_dir) / ".neat" / "outcomes"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="neat-outcome-", dir=scratch) as tmp:
        record = Path(tmp) / "outcome.json"
        code, text = stream([_bin("dvc"), "repro", "--single-item", dvc_name], project_dir,
                            _env() | {OUTCOME_ENV: str(record)}, on_line)
        outcome = read_outcome(record)
    if code != 0:
        if outcome and outcome["exit_code"] != 0:  # the stage itself failed: its own one-line error
            raise StageFailed(dvc_name, outcome["exit_code"], outcome["message"],
                              transient=not is_bad_input(outcome["exit_code"]))
        # DVC failed around the stage (lock, remote, missing input): its last error line, for the message only
        tail = next((ln for ln in reversed(text.splitlines()) if "error" in ln.lower()), text[-300:])
        raise StageFailed(dvc_name, code, tail.strip(), transient=True)
    return {"stage": dvc_name, "reused_from_cache": outcome is None}


@task(retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=_retry_transient, task_run_name="{stage_name}")
def pipeline_stage_task(stage_name: str, project_dir: str, use_dvc: bool = True) -> dict:
    """One stage of the manifest, named as in dvc.yaml (e.g. `train_rm`)."""
    logger = get_run_logger()
    if use_dvc:
        # streamed: a 40-minute `train` shows its progress in the flow-run log while it runs
        return repro_stage(stage_name, project_dir, logger.info)
    from neat.stages import by_dvc_name, run_stage

    stage = by_dvc_name(stage_name)
    with contextlib.chdir(project_dir):  # params.yaml paths are relative to the project
        summary = run_stage(stage.name, load_params("params.yaml"), **stage.options)  # as dvc.yaml's cmd
    logger.info(json.dumps(summary, default=str)[:2000])
    return {"stage": stage_name, "reused_from_cache": False}


def _publish_artifacts(project: Path, params) -> dict:
    metrics = {}
    for path in sorted((project / params.paths.out / "metrics").glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        for key, value in data.items():
            if isinstance(value, (int, float, str, bool)) or value is None:
                metrics[f"{path.stem}.{key}"] = value
    if metrics:
        create_table_artifact(key="neat-metrics", table=[{"metric": k, "value": v} for k, v in metrics.items()],
                              description="NEAT run metrics")
    report = project / params.paths.out / "report" / "report.md"
    if report.exists():
        from neat.report import inline_images

        # the UI cannot follow the report's relative PNG links: the figures travel inside the markdown
        create_markdown_artifact(key="neat-report", markdown=inline_images(report.read_text(), report.parent),
                                 description="NEAT run report")
    return metrics


def _save_experiment(project: Path, name: Optional[str], logger) -> Optional[str]:
    from prefect.runtime import flow_run

    name = name or f"prefect-{flow_run.name or os.getpid()}"
    proc = run([_bin("dvc"), "exp", "save", "-f", "-n", name], project, env=_env())
    if proc.returncode != 0:
        logger.warning(f"dvc exp save failed: {proc.stderr.strip()[-300:]}")
        return None
    return name


def _uncached_outputs(project: Path, out_dir: str) -> list[Path]:
    """The `cache: false` outputs of the manifest (metrics, plots, report): `dvc checkout` cannot restore them."""
    return [project / name.replace(OUT, out_dir) for name in uncached_outputs() if "${" not in name.replace(OUT, "")]


@contextlib.contextmanager
def workspace_kept(project: Path, logger) -> Iterator[None]:
    """Leave dvc.lock and the outputs as they were before a run with overrides.

    An override run is an experiment (saved with `dvc exp save`), not the workspace's state: left in
    place, its dvc.lock and outputs would disagree with params.yaml, so the next `dvc repro` would
    retrain and a `dvc push` or promotion in between would ship a model params.yaml does not describe.
    dvc.lock and the uncached outputs are copied aside first; the cached outputs come back from the
    DVC cache with `dvc checkout` once the lock is restored.
    """
    lock = project / "dvc.lock"
    lock_before = lock.read_bytes() if lock.exists() else None
    uncached = _uncached_outputs(project, load_params(project / "params.yaml").paths.out)
    with tempfile.TemporaryDirectory(prefix="neat-workspace-") as tmp:
        saved = {}
        for i, path in enumerate(uncached):
            if path.is_dir():
                shutil.copytree(path, Path(tmp) / str(i))
            elif path.is_file():
                shutil.copy2(path, Path(tmp) / str(i))
            saved[path] = Path(tmp) / str(i)
        try:
            yield
        finally:
            for path, copy in saved.items():
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
                if copy.is_dir():
                    shutil.copytree(copy, path)
                elif copy.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(copy, path)
            if lock_before is None:
                lock.unlink(missing_ok=True)
            else:
                write_bytes_atomic(lock, lock_before)
                proc = run([_bin("dvc"), "checkout", "--force"], project, env=_env())
                if proc.returncode != 0:
                    logger.warning(f"dvc checkout after the override run failed: {proc.stderr.strip()[-300:]}")
            logger.info("workspace restored: dvc.lock and outputs are those of params.yaml again")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _run_pipeline(project: Path, overrides: Optional[dict[str, Any]], stages: Optional[list[str]], use_dvc: bool,
                  experiment_name: Optional[str], then: Optional[Callable[[Any], dict]] = None) -> dict:
    """The pipeline under the checkout's lock; `then(params)` (the retraining gate) runs inside it too,
    on this run's outputs, before an override run's results leave the workspace."""
    logger = get_run_logger()
    with project_lock(project):
        params_file, dvc_yaml = project / "params.yaml", project / "dvc.yaml"
        original, original_dvc_yaml = params_file.read_text(encoding="utf-8"), dvc_yaml.read_text(encoding="utf-8")
        kept = workspace_kept(project, logger) if overrides else contextlib.nullcontext()
        extra = {}
        with kept:
            try:
                if overrides:
                    set_params_in_file(params_file, overrides)
                    logger.info(f"params.yaml overrides for this run: {overrides}")
                    if "paths.data" in overrides:  # a hub: source is no file dep of dvc.yaml, a local file is
                        sync_dvc_yaml(dvc_yaml)
                params = load_params(params_file)
                order = [s.dvc_name for s in pipeline()]
                if stages:
                    unknown = set(stages) - set(order)
                    if unknown:
                        raise ValueError(f"unknown stage(s) {sorted(unknown)}; dvc.yaml has {order}")
                    order = [name for name in order if name in stages]
                results = [pipeline_stage_task(name, str(project), use_dvc) for name in order]
                info = revision(project)
                if use_dvc and (overrides or experiment_name):
                    info["dvc_experiment"] = _save_experiment(project, experiment_name, logger)
                metrics = _publish_artifacts(project, params)
                if then is not None:
                    extra = then(params)
            finally:
                if overrides:  # the overrides were for this run only; the experiment keeps them
                    write_text_atomic(params_file, original)
                    write_text_atomic(dvc_yaml, original_dvc_yaml)
    logger.info(f"revision: {info}")
    return {"stages": results, "revision": info, "metrics": metrics, **extra}


# ---------------------------------------------------------------- events: what an automation can react to

EVENT_PREFIX = "neat"


def _emit(event: str, resource_id: str, payload: dict, name: Optional[str] = None) -> None:
    """Emit `neat.<event>` (Prefect events: an automation can notify on it); never fails the flow."""
    from prefect.events import emit_event

    resource = {"prefect.resource.id": resource_id}
    if name:
        resource["prefect.resource.name"] = name
    try:
        emit_event(event=f"{EVENT_PREFIX}.{event}", resource=resource, payload=json.loads(json.dumps(payload, default=str)))
    except Exception as exc:  # noqa: BLE001 - an event is a notification, the run's result stands without it
        print(f"could not emit event {EVENT_PREFIX}.{event}: {type(exc).__name__}: {exc}", file=sys.stderr)


def announce_gate(decision: dict) -> None:
    """`neat.model.promoted` when production moved, `neat.model.refused` when the gate kept it."""
    version = decision.get("version") or decision.get("candidate")
    if decision.get("promote"):
        _emit("model.promoted", f"neat.registry.version.{version}", decision, name=version)
    elif version:
        _emit("model.refused", f"neat.registry.version.{version}", decision, name=version)


def _on_bad_end(flow, flow_run, state) -> None:
    """on_failure / on_crashed: log the end state and emit `neat.flow.failed` / `neat.flow.crashed`."""
    from prefect.logging.loggers import flow_run_logger

    kind = "crashed" if state.is_crashed() else "failed"
    message = (state.message or "")[:2000]
    flow_run_logger(flow_run, flow).error(f"{flow.name} {kind}: {message}")
    _emit(f"flow.{kind}", f"prefect.flow-run.{flow_run.id}",
          {"flow": flow.name, "flow_run": flow_run.name, "state": state.name, "message": message},
          name=flow_run.name)


@flow(name="neat-pipeline", log_prints=True, on_failure=[_on_bad_end], on_crashed=[_on_bad_end])
def neat_pipeline(project_dir: str = ".", overrides: Optional[ParamOverrides] = None,
                  stages: Optional[list[str]] = None, use_dvc: bool = True,
                  experiment_name: Optional[str] = None) -> dict:
    """Run the stages of dvc.yaml in order. `overrides` are written into params.yaml for this run (validated
    first) and the result is saved as a DVC experiment; params.yaml, dvc.lock and the outputs are then
    restored, so the workspace stays as params.yaml describes it.

    Args:
        project_dir: The project checkout (params.yaml, dvc.yaml), as seen by the worker.
        overrides: Parameters for this run only, a form of params.yaml's sections (or dotted keys, e.g.
            {"train.lr": 1e-5}); the run is saved as a DVC experiment and the workspace is left as params.yaml
            describes it.
        stages: Run only these dvc.yaml stages (e.g. ["prepare", "train_rm"]); empty runs them all.
        use_dvc: Run each stage through `dvc repro` (cached, recorded in dvc.lock); false runs them in-process.
        experiment_name: Name of the DVC experiment this run is saved as (default: prefect-<flow run name>).
    """
    return _run_pipeline(Path(project_dir).resolve(), _dotted(overrides), stages, use_dvc, experiment_name)


def _dotted(overrides: Optional[ParamOverrides]) -> Optional[dict[str, Any]]:
    """The filled-in overrides as {"train.lr": 1e-5}; None when there are none."""
    if overrides is None:
        return None
    if not isinstance(overrides, ParamOverrides):  # the flow's function called directly (`.fn`), not the flow
        overrides = ParamOverrides.model_validate(overrides)
    return overrides.dotted() or None


@flow(name="neat-retrain", log_prints=True, on_failure=[_on_bad_end], on_crashed=[_on_bad_end])
def neat_retrain(project_dir: str = ".", overrides: Optional[ParamOverrides] = None, use_dvc: bool = True) -> dict:
    """Scheduled retraining: pull the newest data, reproduce, evaluate, promote only if the gate passes.

    Emits `neat.model.promoted` (or `neat.model.refused`) with the gate's decision, for automations.

    Args:
        project_dir: The project checkout (params.yaml, dvc.yaml), as seen by the worker.
        overrides: Parameters for this run only, a form of params.yaml's sections (or dotted keys, e.g.
            {"train.lr": 1e-5}).
        use_dvc: Pull, reproduce and push through DVC; false runs the stages in-process.
    """
    from neat.retrain import fetch_incoming

    overrides = _dotted(overrides)

    logger = get_run_logger()
    project = Path(project_dir).resolve()
    params = load_params(project / "params.yaml")
    if use_dvc and params.retrain.dvc_pull:
        proc = run([_bin("dvc"), "pull", "--allow-missing"], project, env=_env())
        logger.info(f"dvc pull: exit {proc.returncode} {redact(proc.stderr.strip())[-300:]}")
        if proc.returncode != 0:  # retraining on a partial cache would redo (or skip) work silently
            raise RuntimeError(dvc_failure_message("dvc pull", proc.returncode, proc.stdout + proc.stderr))
    newest = fetch_incoming(params, project)
    if newest:  # new data becomes the pipeline's input from now on, not for this run only
        with project_lock(project):
            set_params_in_file(project / "params.yaml", {"paths.data": newest})
            sync_dvc_yaml(project / "dvc.yaml")  # a local file is a data dep again if a hub: source was before
        logger.info(f"new preference data: {newest}")
    # the gate runs on this run's outputs with its own settings, inside the pipeline's slot and lock
    summary = _run_pipeline(project, overrides, None, use_dvc, None,
                            then=lambda run_params: {"gate": promote_if_better(project, run_params)})
    decision = summary.pop("gate")
    logger.info(f"gate: {decision}")
    announce_gate(decision)
    params = load_params(project / "params.yaml", overrides)  # the run's own settings
    if use_dvc and params.retrain.dvc_push:
        proc = run([_bin("dvc"), "push"], project, env=_env())
        logger.info(f"dvc push: exit {proc.returncode} {redact(proc.stderr.strip())[-300:]}")
        if proc.returncode != 0:  # a promoted model whose outputs are not in the remote cannot be reproduced
            raise RuntimeError(dvc_failure_message("dvc push", proc.returncode, proc.stdout + proc.stderr))
    return summary | {"gate": decision}


def mark_orphaned_runs_crashed(work_pool: str = "neat-pool") -> list[str]:
    """Mark Running flow runs of `work_pool` whose process is gone from this machine as Crashed.

    A process worker runs each flow run as a child process (in its own session) on the worker's
    machine and records its pid as the run's `infrastructure_pid`. When the worker's machine or
    container dies, or the worker and its runs are killed, nothing tells the server: the run stays
    Running (Prefect only notices through flow heartbeats plus a zombie-run automation, which this
    project does not require). A worker restarted on the same machine runs this first
    (`python -m flows.pipeline mark-crashed --pool neat-pool && prefect worker start ...`), so an
    orphaned run is marked Crashed and can simply be run again: DVC reuses the stages that completed
    and `neat train --resume` continues from the last checkpoint. Returns the ids marked.
    """
    import psutil
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType, \
        WorkPoolFilter, WorkPoolFilterName
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    def alive(pid: Optional[str]) -> bool:
        try:
            proc = psutil.Process(int(str(pid).rsplit(":", 1)[-1]))
            return proc.status() != psutil.STATUS_ZOMBIE and "prefect" in " ".join(proc.cmdline())
        except (ValueError, psutil.Error):
            return False

    marked = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[work_pool])),
        )
        for run_ in runs:
            if run_.infrastructure_pid and not alive(run_.infrastructure_pid):
                client.set_flow_run_state(run_.id, Crashed(message=(
                    f"flow-run process {run_.infrastructure_pid} no longer exists (its worker died); "
                    "marked crashed at worker start")), force=True)
                marked.append(str(run_.id))
    return marked


def main(argv: Optional[list[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m flows.pipeline",
        description="Run the NEAT Prefect flow locally, or mark a dead worker's runs as crashed. "
                    "Deployments (prefect.yaml) run the same flows on a worker.")
    sub = parser.add_subparsers(dest="command")
    run_p = sub.add_parser("run", help="run the neat-pipeline flow once, here (the default without a command)",
                           description="Run the stages of dvc.yaml in order as a Prefect flow run.")
    run_p.add_argument("--project-dir", default=".", help="the project checkout (default: .)")
    run_p.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a parameter for this run only (saved as a DVC experiment; repeatable)")
    run_p.add_argument("--stage", dest="stages", action="append", default=None,
                       help="run only this dvc.yaml stage (repeatable)")
    run_p.add_argument("--no-dvc", action="store_true", help="run the stages in-process instead of through DVC")
    crashed = sub.add_parser("mark-crashed", help="mark Running flow runs whose process is gone as Crashed",
                             description=(mark_orphaned_runs_crashed.__doc__ or "").split("\n")[0])
    crashed.add_argument("--pool", default="neat-pool", help="the work pool (default: neat-pool)")
    args = parser.parse_args(argv)
    if args.command == "mark-crashed":
        for run_id in mark_orphaned_runs_crashed(args.pool):
            print(f"marked flow run {run_id} as Crashed (its process is gone)")
        return 0
    if args.command is None:
        args = parser.parse_args(["run"])
    overrides = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"-S {item}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    neat_pipeline(args.project_dir, overrides or None, args.stages, not args.no_dvc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
