"""All-or-nothing output sets: the files one stage writes change together or not at all.

A stage writes each of its files into a staging directory under the output root
(`<root>/.neat-staging-<stage>.tmp/`, same filesystem, so a full disk fails there and touches nothing).
Once every file is complete, a journal listing the moves is written atomically, the files are renamed
onto their targets, and the journal is removed. A kill before the journal leaves the previous set
(the staging directory is removed by the next run); a kill after it is rolled forward by
`recover(root)`, which every stage runs first: the reader sees either the old set or the new one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

from neat.errors import DataError

JOURNAL_GLOB = ".neat-commit-*.json"


def _journal(root: Path, stage: str) -> Path:
    return root / f".neat-commit-{stage}.json"


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def output_set(root: str | os.PathLike, stage: str) -> Iterator[Callable[[str | os.PathLike], Path]]:
    """Yield `staged(target)`: the path to write `target` (a path under `root`) to. On success every
    staged file replaces its target in one journaled commit; on failure nothing under `root` changes."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    recover(root)
    staging = root / f".neat-staging-{stage}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    moves: dict[Path, Path] = {}

    def staged(target: str | os.PathLike) -> Path:
        target = Path(target)
        rel = target.resolve().relative_to(root.resolve())
        path = staging / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        moves[path] = target
        return path

    try:
        try:
            yield staged
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise DataError(f"{root}: cannot write the outputs of {stage}: disk full ({exc.strerror}); "
                                "previous outputs kept") from None
            raise
        missing = [str(t) for s, t in moves.items() if not s.exists()]
        if missing:
            raise RuntimeError(f"output set of {stage}: staged files not written: {missing}")
        for target in moves.values():
            target.parent.mkdir(parents=True, exist_ok=True)
        journal = _journal(root, stage)
        tmp = journal.with_name(journal.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"stage": stage, "moves": [[str(s), str(t)] for s, t in moves.items()]}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, journal)  # the commit point
        _fsync_dir(root)
        _apply(journal)
    finally:
        journal = _journal(root, stage)
        if journal.exists():  # interrupted after the commit point: finish it now, else the next run will
            with contextlib.suppress(Exception):
                _apply(journal)
        if not journal.exists():
            shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            journal.with_name(journal.name + ".tmp").unlink()


def _apply(journal: Path) -> None:
    moves = json.loads(journal.read_text(encoding="utf-8"))["moves"]
    for source, target in moves:
        if os.path.exists(source):
            os.replace(source, target)
    journal.unlink()


def recover(root: str | os.PathLike) -> list[str]:
    """Finish the commits a killed stage left half-done under `root`; returns the stages recovered."""
    root = Path(root)
    done = []
    if not root.is_dir():
        return done
    for journal in sorted(root.glob(JOURNAL_GLOB)):
        try:
            _apply(journal)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a damaged journal was never the commit point's atomic rename; leave it for a human
        done.append(journal.name)
        shutil.rmtree(root / journal.name.replace(".neat-commit-", ".neat-staging-").replace(".json", ".tmp"),
                      ignore_errors=True)
    return done
