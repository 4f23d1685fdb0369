"""Model registry: versioned checkpoints, a `production` pointer, the promotion gate and rollback.

Layout under `registry.uri` (an S3 prefix through boto3, or a local folder):

    versions/<version>/policy/...        the checkpoint (safetensors HF directory)
    versions/<version>/report/...        its report
    versions/<version>/metrics.json      its benchmark metrics
    versions/<version>/policy/README.md  its model card (base model, data, params, figures, lineage)
    production.json                      alias `production`: {"version": ..., "history": [older, newest last]}
    candidate.json                       alias `candidate`: the latest challenger the gate looked at
    pointer-log/<timestamp>.json         every alias move, for audit

Two aliases, the MLflow champion/challenger convention: every checkpoint the gate judges is published
and becomes the `candidate`; `production` moves to it only if the gate passes. Promotion, alias moves
and rollback only write: nothing is ever deleted.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from neat.errors import NeatError

POINTER = "production.json"
# every version id: what `new_version` makes ("v20240501T120000123456Z") or a short name like "v1";
# no dots or slashes, so a version can never name a path outside `versions/` or the download cache
VERSION_PATTERN = re.compile(r"v[0-9A-Za-z_-]{1,64}")


class RegistryError(NeatError):
    """The registry cannot be reached or is inconsistent."""


def check_version(version: object, where: str = "version") -> str:
    """`version` if it matches VERSION_PATTERN, else a RegistryError (a path traversal attempt or damage)."""
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        raise RegistryError(f"{where}: {str(version)[:80]!r} is not a valid version id "
                            f"(expected {VERSION_PATTERN.pattern})")
    return version


def check_key(key: str) -> str:
    """`key` if it is a plain relative object key: no '..', '.', empty or absolute parts, no backslash or NUL."""
    parts = key.split("/")
    if (not key or key.startswith("/") or "\\" in key or "\x00" in key
            or any(p in ("..", ".") for p in parts) or "" in parts[:-1]):
        raise RegistryError(f"registry key {key[:120]!r} leaves its prefix; refusing to use it")
    return key


def inside(root: Path, relative: str) -> Path:
    """`root / relative`, refused unless it stays under `root` once symlinks and '..' are resolved."""
    check_key(relative)
    target = Path(root) / relative
    if not target.resolve().is_relative_to(Path(root).resolve()):
        raise RegistryError(f"registry key {relative[:120]!r} resolves outside {root}; refusing to use it")
    return target


class Store(Protocol):
    """Where versions and data live: a local folder (`LocalStore`) or an S3 prefix (`S3Store`). Keys are
    relative to the store's root and never leave it (`check_key`); callers never branch on the kind."""

    def put(self, key: str, path: Path) -> None:
        """Upload the file `path` as `key` (replacing it)."""

    def download(self, key: str, path: Path) -> None:
        """Copy `key` into the file `path`; a RegistryError if it is missing."""

    def put_json(self, key: str, obj: dict) -> None: ...
    def get_json(self, key: str) -> dict | None: ...

    def list(self, prefix: str) -> list[str]:
        """Every key under `prefix`, sorted."""

    def newest(self, prefix: str = "", suffixes: tuple[str, ...] = ()) -> tuple[str, float] | None:
        """(key, modification time in seconds since the epoch) of the most recently modified object under
        `prefix` whose name ends with one of `suffixes` (any, if empty); ties go to the greater key. None if
        there is none."""


def _newest(found: list[tuple[str, float]], suffixes: tuple[str, ...]) -> tuple[str, float] | None:
    candidates = [(mtime, key) for key, mtime in found if not suffixes or key.endswith(suffixes)]
    if not candidates:
        return None
    mtime, key = max(candidates)
    return key, mtime


class LocalStore:
    def __init__(self, root: str):
        self.root = Path(root)

    def put(self, key: str, path: Path) -> None:
        target = inside(self.root, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)

    def put_json(self, key: str, obj: dict) -> None:
        from neat.io import write_json_atomic

        write_json_atomic(inside(self.root, key), obj)

    def get_json(self, key: str) -> dict | None:
        path = inside(self.root, key)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError):
            raise RegistryError(f"{path}: damaged registry file (not valid JSON)") from None

    def download(self, key: str, path: Path) -> None:
        source = inside(self.root, key)
        if not source.is_file():
            raise RegistryError(f"{self.root}: {key} is missing")
        shutil.copyfile(source, path)

    def list(self, prefix: str) -> list[str]:
        base = inside(self.root, prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not base.exists():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file())

    def newest(self, prefix: str = "", suffixes: tuple[str, ...] = ()) -> tuple[str, float] | None:
        if not self.root.is_dir():
            raise RegistryError(f"{self.root}: folder not found")
        return _newest([(key, (self.root / key).stat().st_mtime) for key in self.list(prefix)], suffixes)


class S3Store:
    """boto3 store; credentials come from the environment / AWS config, never from params.yaml."""

    def __init__(self, uri: str, endpoint_url: str | None, region: str):
        import boto3
        from botocore.config import Config

        bucket_prefix = uri.removeprefix("s3://")
        self.bucket, _, prefix = bucket_prefix.partition("/")
        self.prefix = prefix.strip("/")
        self.uri = uri
        # a session of its own: credentials are read from the environment now, not from boto3's default
        # session, which keeps the first credentials it resolved in this process
        self.client = self._call("connection setup", lambda: boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region,
            config=Config(retries={"max_attempts": 3, "mode": "standard"})))

    def _key(self, key: str) -> str:
        if key:  # "" lists the whole prefix
            check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, fn, *args, **kwargs):
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        from neat.s3_errors import describe_s3_failure

        try:
            return fn(*args, **kwargs)
        except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
            code = exc.response.get("Error", {}).get("Code", "?") if isinstance(exc, ClientError) else None
            if code in ("NoSuchKey", "404"):
                return None
            known = describe_s3_failure(exc)  # refused credentials are not blamed on the endpoint
            detail = known[1] if known else f"{code or type(exc).__name__}; check the bucket, the endpoint and the credentials"
            raise RegistryError(f"{self.uri}: {what} failed: {detail}") from None

    def put(self, key: str, path: Path) -> None:
        self._call(f"upload of {key}", self.client.upload_file, str(path), self.bucket, self._key(key))

    def put_json(self, key: str, obj: dict) -> None:
        body = json.dumps(obj, indent=2, sort_keys=True).encode()
        self._call(f"write of {key}", self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=body,
                   ContentType="application/json")

    def download(self, key: str, path: Path) -> None:
        self._call(f"download of {key}", self.client.download_file, self.bucket, self._key(key), str(path))
        if not Path(path).exists():
            raise RegistryError(f"{self.uri}: {key} is missing")

    def get_json(self, key: str) -> dict | None:
        resp = self._call(f"read of {key}", self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        if resp is None:
            return None
        try:
            return json.loads(resp["Body"].read())
        except (ValueError, RecursionError):
            raise RegistryError(f"{self.uri}/{key}: damaged registry file (not valid JSON)") from None

    def _objects(self, prefix: str) -> list[tuple[str, float]]:
        """(key relative to the store's prefix, modification time) of every object under `prefix`."""
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call(f"listing of {prefix or self.uri}",
                           lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix))))
        return [(obj["Key"][len(self._key("")):] if self.prefix else obj["Key"], obj["LastModified"].timestamp())
                for page in pages or [] for obj in page.get("Contents", [])]

    def list(self, prefix: str) -> list[str]:
        return sorted(key for key, _ in self._objects(prefix))

    def newest(self, prefix: str = "", suffixes: tuple[str, ...] = ()) -> tuple[str, float] | None:
        return _newest(self._objects(prefix), suffixes)


def store_at(uri: str, registry) -> Store:
    """The store at `uri` (s3://bucket/prefix or a local folder), reached with `registry`'s endpoint and region."""
    if uri.startswith("s3://"):
        return S3Store(uri, registry.endpoint_url, registry.region)
    return LocalStore(uri)


def open_store(registry) -> Store:
    if not registry.uri:
        raise RegistryError("registry.uri is not set in params.yaml (s3://bucket/prefix or a local folder)")
    return store_at(registry.uri, registry)


# ---------------------------------------------------------------- the gate


@dataclass
class GateDecision:
    promote: bool
    reason: str
    candidate: float | None
    current: float | None


# a base-relative metric, read from a head-to-head evaluation (candidate vs production), and its "no change" value
_RELATIVE = {"win_rate": 0.5, "sampled_win_rate": 0.5, "eval_reward_diff": 0.0, "perplexity_ratio": 1.0,
             "unsafe_refusal_diff": 0.0, "safe_compliance_diff": 0.0}


def _holds(new: float, cur: float, margin: float, higher_is_better: bool) -> bool:
    """The candidate's value `new` does not regress by more than `margin` against `cur`."""
    return new >= cur - margin if higher_is_better else new <= cur + margin


def head_to_head_gate(metrics: dict, metric: str, margin: float, higher_is_better: bool = True) -> GateDecision:
    """The gate on one evaluation of the candidate ("trained") against production ("base"): the candidate's
    `metric` vs production's `base_<metric>`, or a relative metric (win rate, paired difference, ratio)
    vs its no-change value. Both sides were measured on the same prompts by the same judges."""
    if metric in _RELATIVE:
        new, cur = metrics.get(metric), _RELATIVE[metric]
    else:
        new, cur = metrics.get(metric), metrics.get(f"base_{metric}")
        if f"base_{metric}" not in metrics:
            return GateDecision(False, f"'{metric}' has no production counterpart (base_{metric}) in the "
                                       "head-to-head evaluation; pick another gate.metric", None, None)
    if new is None or cur is None:
        return GateDecision(False, f"head-to-head evaluation lacks a value for '{metric}'", None, None)
    new, cur = float(new), float(cur)
    ok = _holds(new, cur, margin, higher_is_better)
    word = "holds" if ok else "regresses"
    return GateDecision(ok, f"{metric} {word} head to head: candidate {new:.4f} vs production {cur:.4f} "
                            f"(margin {margin})", new, cur)


def gate(candidate_metrics: dict, current_metrics: dict | None, metric: str, margin: float,
         higher_is_better: bool = True) -> GateDecision:
    """Promote iff the candidate does not regress by more than `margin` against the current model."""
    if metric not in candidate_metrics or candidate_metrics[metric] is None:
        return GateDecision(False, f"candidate metrics lack '{metric}'", None, None)
    new = float(candidate_metrics[metric])
    if not current_metrics or current_metrics.get(metric) is None:
        return GateDecision(True, "no production model yet", new, None)
    cur = float(current_metrics[metric])
    ok = _holds(new, cur, margin, higher_is_better)
    word = "holds" if ok else "regresses"
    return GateDecision(ok, f"{metric} {word}: {new:.4f} vs production {cur:.4f} (margin {margin})", new, cur)


def gate_rules(gate_params) -> list[tuple[str, float, bool]]:
    """(metric, margin, higher_is_better) for every metric the gate requires: `gate.metric`, then
    each entry of `gate.metrics` (a metric named twice is checked once, with its first settings)."""
    rules = [(gate_params.metric, gate_params.margin, gate_params.higher_is_better)]
    for m in getattr(gate_params, "metrics", None) or []:
        if m.name not in {r[0] for r in rules}:
            rules.append((m.name, m.margin, m.higher_is_better))
    return rules


def combine(decisions: list[GateDecision]) -> GateDecision:
    """One verdict from several metrics: promote only if every one holds; the reason names each."""
    first = decisions[0]
    if len(decisions) == 1:
        return first
    failed = [d for d in decisions if not d.promote]
    reasons = [d.reason for d in (failed or decisions)]
    if not failed and all(d.reason == "no production model yet" for d in decisions):
        reasons = ["no production model yet"]
    return GateDecision(not failed, "; ".join(dict.fromkeys(reasons)), first.candidate, first.current)


def multi_gate(gate_params, candidate_metrics: dict, current_metrics: dict | None) -> GateDecision:
    """`gate` on every rule of `gate_rules`, combined."""
    return combine([gate(candidate_metrics, current_metrics, metric, margin, higher)
                    for metric, margin, higher in gate_rules(gate_params)])


def multi_head_to_head_gate(gate_params, metrics: dict) -> GateDecision:
    """`head_to_head_gate` on every rule of `gate_rules`, combined."""
    return combine([head_to_head_gate(metrics, metric, margin, higher)
                    for metric, margin, higher in gate_rules(gate_params)])


# ---------------------------------------------------------------- publishing and the pointer


def new_version(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    return now.strftime("v%Y%m%dT%H%M%S%fZ")


def _upload_dir(store: Store, prefix: str, folder: Path) -> int:
    count = 0
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            store.put(f"{prefix}/{path.relative_to(folder).as_posix()}", path)
            count += 1
    return count


def check_pointer(pointer: object) -> dict:
    """`production.json` checked against its schema: {"version": <id>, "history": [<id>, ...]}, ids valid."""
    if not isinstance(pointer, dict) or not isinstance(pointer.get("history", []), list):
        raise RegistryError(f"{POINTER}: damaged pointer (expected {{\"version\": ..., \"history\": [...]}})")
    check_version(pointer.get("version"), f"{POINTER}: version")
    for i, old in enumerate(pointer.get("history", [])):
        check_version(old, f"{POINTER}: history[{i}]")
    return {"version": pointer["version"], "history": list(pointer.get("history", []))}


def production(store: Store) -> dict | None:
    pointer = store.get_json(POINTER)
    return None if pointer is None else check_pointer(pointer)


def is_published(store: Store, version: str) -> bool:
    return store.get_json(f"versions/{check_version(version)}/metrics.json") is not None


def fetch_policy(store: Store, version: str, cache_root: Path) -> Path:
    """The checkpoint of a published `version`, downloaded once into `cache_root/<version>`."""
    from neat.io import atomic_path

    target = Path(cache_root) / check_version(version)
    if (target / "config.json").exists():
        return target
    prefix = f"versions/{version}/policy/"
    keys = [k for k in store.list(prefix) if not k.endswith("/")]
    if not keys:
        raise RegistryError(f"version {version} has no published checkpoint under {prefix}")
    with atomic_path(target, is_dir=True) as tmp:
        for key in keys:
            if not key.startswith(prefix):
                raise RegistryError(f"registry key {key[:120]!r} is not under {prefix}; refusing to use it")
            dest = inside(tmp, key[len(prefix):])
            dest.parent.mkdir(parents=True, exist_ok=True)
            store.download(key, dest)
    return target


def production_metrics(store: Store) -> dict | None:
    pointer = production(store)
    return store.get_json(f"versions/{pointer['version']}/metrics.json") if pointer else None


def _move_pointer(store: Store, pointer: dict, action: str) -> None:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    store.put_json(f"pointer-log/{stamp}.json", pointer | {"action": action, "at": stamp})
    store.put_json(POINTER, pointer)


def publish(store: Store, policy_dir: Path, metrics: dict, report_dir: Path | None = None,
            version: str | None = None, extra: dict | None = None, card: str | None = None) -> str:
    """Upload a checkpoint with its metrics (and report) as a new version; no alias is moved.

    `card` (a model card's text) replaces the checkpoint's README.md in the version: the card written at
    training time knows no evaluation, the one written at publishing does."""
    version = check_version(version or new_version())
    if not (Path(policy_dir) / "config.json").exists():
        raise RegistryError(f"{policy_dir}: not a checkpoint directory (no config.json)")
    _upload_dir(store, f"versions/{version}/policy", Path(policy_dir))
    if card is not None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="neat-card-") as tmp:
            path = Path(tmp) / "README.md"
            path.write_text(card, encoding="utf-8")
            store.put(f"versions/{version}/policy/README.md", path)
    if report_dir and Path(report_dir).exists():
        _upload_dir(store, f"versions/{version}/report", Path(report_dir))
    store.put_json(f"versions/{version}/metrics.json", metrics)
    store.put_json(f"versions/{version}/info.json", {"version": version, **(extra or {})})
    return version


def promote(store: Store, version: str) -> dict:
    """Move the production pointer to `version` (which must be published)."""
    if not is_published(store, version):
        raise RegistryError(f"version {version} is not published in the registry")
    current = production(store)
    history = (current.get("history", []) + [current["version"]]) if current else []
    pointer = {"version": version, "history": history}
    _move_pointer(store, pointer, "promote")
    return pointer


def rollback(store: Store) -> dict:
    """Move the production pointer back to the previous version; nothing is deleted."""
    current = production(store)
    if not current:
        raise RegistryError("no production model to roll back")
    if not current.get("history"):
        raise RegistryError(f"production is {current['version']}, the first version: nothing to roll back to")
    previous = current["history"][-1]
    if not is_published(store, previous):
        raise RegistryError(f"{POINTER}: history names {previous}, which was never published in the registry; "
                            "refusing to roll back to it")
    pointer = {"version": previous, "history": current["history"][:-1]}
    _move_pointer(store, pointer, f"rollback from {current['version']}")
    return pointer


# ---------------------------------------------------------------- aliases: production and candidate

ALIASES = ("production", "candidate")


def _alias_key(alias: str) -> str:
    if alias not in ALIASES:
        raise RegistryError(f"unknown alias {alias!r}; the registry keeps {', '.join(ALIASES)}")
    return f"{alias}.json"


def alias(store: Store, name: str) -> dict | None:
    """The pointer of alias `name` ({"version": ..., "history": [...]}), or None while unset."""
    if name == "production":
        return production(store)
    pointer = store.get_json(_alias_key(name))
    return None if pointer is None else check_pointer(pointer)


def set_alias(store: Store, name: str, version: str) -> dict:
    """Point alias `name` at a published `version` (the old target joins its history); logged, nothing deleted."""
    if name == "production":
        return promote(store, version)
    if not is_published(store, check_version(version)):
        raise RegistryError(f"version {version} is not published in the registry")
    current = alias(store, name)
    if current and current["version"] == version:
        return current
    history = (current["history"] + [current["version"]]) if current else []
    pointer = {"version": version, "history": history}
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    store.put_json(f"pointer-log/{stamp}.json", pointer | {"action": f"set {name}", "at": stamp})
    store.put_json(_alias_key(name), pointer)
    return pointer


# what `neat registry` shows of a version's metrics (those present)
SHOWN_METRICS = ("eval_reward_mean", "eval_reward_mean_ci_low", "eval_reward_mean_ci_high", "win_rate",
                 "perplexity", "unsafe_refusal_rate", "safe_compliance_rate")
LINEAGE_KEYS = ("checkpoint", "git_commit", "git_dirty", "dvc_lock_sha256", "gate")


def describe_version(store: Store, version: str) -> dict:
    """A version's headline metrics and lineage, as stored when it was published."""
    metrics = store.get_json(f"versions/{check_version(version)}/metrics.json") or {}
    info = store.get_json(f"versions/{version}/info.json") or {}
    return {"version": version,
            "metrics": {k: metrics[k] for k in SHOWN_METRICS if metrics.get(k) is not None},
            "lineage": {k: info[k] for k in LINEAGE_KEYS if k in info}}


def status(store: Store) -> dict:
    """Both aliases, each with its version's metrics and lineage and its history (None while unset)."""
    out: dict = {}
    for name in ALIASES:
        pointer = alias(store, name)
        out[name] = None if pointer is None else describe_version(store, pointer["version"]) | {
            "history": pointer["history"]}
    return out
