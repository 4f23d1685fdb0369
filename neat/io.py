"""Atomic file and directory writes (readers never see a half-written output), JSON lines, content
hashes and resumable sharded work."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from neat.errors import DataError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto `target`, else remove it.

    The temporary path lives in the same directory as `target`, so the final rename is atomic on
    POSIX filesystems. An existing `target` is replaced only after the new one is complete.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    out = tmp if is_dir else tmp / target.name
    try:
        yield out
        if is_dir:
            if target.exists():
                old = target.with_name(f".{target.name}.old-{os.getpid()}")
                os.replace(target, old)
                os.replace(out, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(out, target)
        else:
            os.replace(out, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def json_safe(obj: Any) -> Any:
    """NaN/inf → None and numpy scalars → python, recursively, so metrics files are strict JSON."""
    if hasattr(obj, "item") and getattr(obj, "shape", None) == ():  # numpy scalar
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(target: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(target, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


# ---------------------------------------------------------------- JSON lines


def write_jsonl_atomic(target: str | os.PathLike, rows: Sequence[dict]) -> None:
    write_text_atomic(target, "".join(json.dumps(json_safe(r), ensure_ascii=False) + "\n" for r in rows))


def iter_jsonl(lines: Iterable[str], path: str | os.PathLike,
               invalid: Callable[[int, str], str] | None = None) -> Iterator[tuple[int, Any]]:
    """(line number, value) of every non-blank line of JSON lines read from `path`.

    A line that is not JSON raises one DataError: `invalid(number, reason)`, by default
    "<path>: line <number>: not valid JSON (<reason>)".
    """
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            reason = exc.msg
        except (ValueError, RecursionError) as exc:  # an integer of thousands of digits; nested too deeply
            reason = type(exc).__name__
        else:
            yield number, value
            continue
        raise DataError(invalid(number, reason) if invalid else f"{path}: line {number}: not valid JSON ({reason})")


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """The values of a JSON-lines file that an earlier stage wrote; missing or not JSON → one DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found (run the stage that writes it first)")
    return [value for _, value in iter_jsonl(path.read_text(encoding="utf-8").splitlines(), path)]


# ---------------------------------------------------------------- resumable sharded work


def work_dir_for(checkpoints: str | os.PathLike, out: str | os.PathLike, stage: str) -> Path:
    """Where a stage keeps resumable work for the outputs under `out`: inside `paths.checkpoints`,
    never inside the DVC outputs (DVC deletes a stage's outputs before it reruns the stage).
    The training state is `work_dir_for(..., "train")` (`neat.training.checkpoint.state_dir_for`)."""
    out = Path(out).resolve()
    key = hashlib.sha256(str(out).encode()).hexdigest()[:8]
    return Path(checkpoints) / f"{out.name}-{key}" / stage


# ---------------------------------------------------------------- content hashes (16 hex of a sha256)


def _feed(h, path: str | os.PathLike) -> None:
    """Stream a file's bytes into the hash `h` (a multi-GB checkpoint is never read whole)."""
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)


def fingerprint_of(obj: Any, *files: str | os.PathLike) -> str:
    """A short hash of a JSON-able description plus the bytes of `files`: the identity of a piece of work."""
    h = hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode())
    for f in files:
        _feed(h, f)
    return h.hexdigest()[:16]


def file_digest(path: str | os.PathLike) -> str:
    """A file's sha256, first 16 hex: what `sha256sum` prints, cut short."""
    h = hashlib.sha256()
    _feed(h, path)
    return h.hexdigest()[:16]


def files_digest(files: list[Path], root: Path) -> str:
    """One hash over several files: each one's path relative to `root`, its size and its full content,
    so two sets that differ anywhere (a renamed file, one LoRA-merged layer) differ here."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{Path(f).relative_to(root)}\0{Path(f).stat().st_size}\0".encode())
        _feed(h, f)
    return h.hexdigest()[:16]


class ShardStore:
    """Completed shards of one stage's work, each written atomically as JSON under `root/<key>/`.

    `key` is a fingerprint of everything the work depends on (inputs, params, model), so a shard of
    other inputs is never reused: directories under `root` with another key are deleted on open.
    A killed run leaves only whole shards behind; the rerun loads them and computes the rest.
    `finish()` removes the work once the stage's output is written.
    """

    def __init__(self, root: str | os.PathLike, key: str, n_shards: int, *, label: str):
        self.root, self.key, self.n, self.label = Path(root), key, n_shards, label
        self.dir = self.root / key
        if self.root.is_dir():
            for other in self.root.iterdir():
                if other.name != key:
                    shutil.rmtree(other, ignore_errors=True) if other.is_dir() else other.unlink(missing_ok=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob(".*.tmp"):  # a shard being written when the last run was killed
            shutil.rmtree(stale, ignore_errors=True)

    def path(self, i: int) -> Path:
        return self.dir / f"shard-{i:05d}-of-{self.n:05d}.json"

    def load(self, i: int) -> Any | None:
        """The saved result of shard `i`, or None if it was not completed (or is unreadable)."""
        try:
            return json.loads(self.path(i).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def save(self, i: int, obj: Any) -> None:
        with atomic_path(self.path(i)) as tmp:
            tmp.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")

    def done(self) -> list[int]:
        return [i for i in range(self.n) if self.path(i).is_file()]

    def announce(self) -> int:
        """Log 'resuming: k of n shards done' when a previous run left completed shards; returns k."""
        k = len(self.done())
        if k:
            log.info("neat %s: resuming: %d of %d shards done (in %s)", self.label, k, self.n, self.dir)
        return k

    def finish(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.root.rmdir()  # only if empty
