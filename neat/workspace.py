"""The checkout a run works in: overrides written into its params.yaml, its one-run-at-a-time lock, and
the revision (git commit, dvc.lock) a run's results came from.

Shared by `neat <stage>` (the lock), the Prefect flows and the promotion gate. The stage chain itself
is not here: it is the manifest in neat/stages.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

import yaml

from neat.config import load_params
from neat.errors import ConfigError, NeatError
from neat.io import write_text_atomic


# ---------------------------------------------------------------- overrides written into params.yaml


def set_params_in_file(path: str | os.PathLike, overrides: dict[str, Any]) -> None:
    """Write `overrides` ({"train.lr": 1e-5}) into a params YAML file, keeping its comments and layout
    (a ruamel.yaml round trip).

    The result is validated by the params schema before it replaces the file (atomically), so a bad
    override leaves the file as it was. Keys must exist in the file already (the schema lists all).
    """
    path = Path(path)
    load_params(path, overrides)  # one-line ConfigError for an unknown key or a bad value
    yaml_rt = _round_trip_yaml()
    doc = yaml_rt.load(path.read_text(encoding="utf-8"))
    for dotted, value in overrides.items():
        *sections, key = dotted.split(".")
        node = doc
        for part in sections:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or key not in node:
            raise ConfigError(f"{path}: key '{dotted}' is not written in the file; add it before overriding")
        if _is_section(dotted.split(".")):
            raise ConfigError(f"{path}: '{dotted}' is a section; override its keys one at a time "
                              f"({dotted}.<key>=...)")
        old = node[key]
        if old == value and isinstance(old, bool) == isinstance(value, bool):
            continue  # as written: keep its spelling (3.0e-4 stays, not 0.0003)
        node[key] = _round_trip_value(value)
    buffer = io.StringIO()
    yaml_rt.dump(doc, buffer)
    new_text = buffer.getvalue()
    load_params_from_text(new_text, path)
    written = yaml.safe_load(new_text)  # what every stage will read (PyYAML, YAML 1.1)
    for dotted, value in overrides.items():
        got = written
        for part in dotted.split("."):
            got = got[part]
        if got != value:
            raise ConfigError(f"{path}: '{dotted}' would be read back as {got!r}, not {value!r}; edit the file")
    write_text_atomic(path, new_text)


def _round_trip_yaml():
    from ruamel.yaml import YAML
    from ruamel.yaml.representer import RoundTripRepresenter

    class Representer(RoundTripRepresenter):
        """`null` written out (not an empty value); floats as PyYAML reads them (1.0e-05, never 1e-05: a string
        to YAML 1.1)."""

    def float_(rep, data: float):
        text = repr(data).lower()
        if "." not in text and "e" in text:
            text = text.replace("e", ".0e", 1)
        return rep.represent_scalar("tag:yaml.org,2002:float", text)

    Representer.add_representer(type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    Representer.add_representer(float, float_)
    yaml_rt = YAML()
    yaml_rt.Representer = Representer
    yaml_rt.preserve_quotes = True
    yaml_rt.width = 10_000  # never fold a long value onto a second line
    return yaml_rt


def _round_trip_value(value: Any) -> Any:
    """`value` for ruamel: lists in flow style as params.yaml writes them, and quotes around any string
    YAML 1.1 (PyYAML, what the stages read with) would not read back as itself (`on`, `yes`, `0777`)."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString

    if isinstance(value, str):
        try:
            plain = yaml.safe_load(value)
        except yaml.YAMLError:
            plain = None
        return value if plain == value else DoubleQuotedScalarString(value)
    if isinstance(value, (list, tuple, dict)):
        node = CommentedMap((k, _round_trip_value(v)) for k, v in value.items()) if isinstance(value, dict) \
            else CommentedSeq(_round_trip_value(v) for v in value)
        node.fa.set_flow_style()
        return node
    return value


def _is_section(parts: list[str]) -> bool:
    from pydantic import BaseModel

    from neat.config import Params

    model = Params
    for part in parts:
        field = model.model_fields.get(part)
        if field is None:
            return False
        model = field.annotation
    return isinstance(model, type) and issubclass(model, BaseModel)


def load_params_from_text(text: str, source: Path) -> None:
    from neat.config import validate_params
    from neat.params_yaml import parse_yaml

    validate_params(parse_yaml(text, str(source)) or {}, str(source))


# ---------------------------------------------------------------- one run at a time per checkout


LOCK_NAME = ".neat-run.lock"
HELD_ENV = "NEAT_RUN_LOCK_HELD"  # set while a process holds the lock: its `neat` children run under it


def _lock_path(project: str | os.PathLike) -> Path:
    return (Path(project) / LOCK_NAME).resolve()


@contextlib.contextmanager
def _holding(path: Path) -> Iterator[None]:
    previous = os.environ.get(HELD_ENV)
    os.environ[HELD_ENV] = str(path)
    try:
        yield
    finally:
        os.environ.pop(HELD_ENV) if previous is None else os.environ.__setitem__(HELD_ENV, previous)


@contextlib.contextmanager
def stage_lock(project: str | os.PathLike) -> Iterator[None]:
    """The checkout's lock for one `neat <stage>`: taken at once or refused with one clear line, so two
    stages never write one checkout's outputs together. A stage run by a flow (which holds the lock and
    says so in NEAT_RUN_LOCK_HELD) runs under its parent's lock, and the ranks > 0 of an `accelerate
    launch` / `torchrun` run under their rank 0's."""
    from filelock import FileLock, Timeout

    path = _lock_path(project)
    if os.environ.get(HELD_ENV) == str(path):
        yield
        return
    if int(os.environ.get("RANK", "0") or 0) > 0:  # a worker of a multi-process launch: rank 0 holds the lock
        yield
        return
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:  # before OSError: filelock's Timeout is a TimeoutError, an OSError
        raise NeatError(f"{path}: another neat run is using this checkout; wait for it to finish "
                        "(one stage or pipeline at a time per checkout)") from None
    except OSError:  # a read-only checkout: nothing can write outputs there to race with
        yield
        return
    try:
        with _holding(path):
            yield
    finally:
        lock.release()


@contextlib.contextmanager
def project_lock(project: str | os.PathLike = ".", timeout: float = 6 * 3600) -> Iterator[None]:
    """An exclusive lock on the checkout: two runs in one working tree would corrupt each other."""
    from filelock import FileLock, Timeout

    path = _lock_path(project)
    lock = FileLock(path, timeout=timeout, poll_interval=1.0)
    try:
        lock.acquire()
    except Timeout:
        raise NeatError(f"{path}: another pipeline run holds the lock for over {timeout:.0f} s") from None
    try:
        with _holding(path):  # the stages this run starts (`neat <stage>` under dvc) share the lock
            yield
    finally:
        lock.release()


# ---------------------------------------------------------------- what a run produced


def run(cmd: list[str], cwd: str | os.PathLike, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


def revision(project: str | os.PathLike = ".") -> dict:
    """Git commit, whether the tree is dirty, and the hash of dvc.lock (what DVC produced)."""
    project = Path(project)
    info: dict[str, Any] = {}
    head = run(["git", "rev-parse", "HEAD"], project)
    info["git_commit"] = head.stdout.strip() if head.returncode == 0 else None
    status = run(["git", "status", "--porcelain", "--untracked-files=no"], project)
    info["git_dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    lock = project / "dvc.lock"
    info["dvc_lock_sha256"] = hashlib.sha256(lock.read_bytes()).hexdigest()[:16] if lock.exists() else None
    return info
