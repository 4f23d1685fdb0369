"""Reading files that an earlier stage wrote (metrics JSON, JSON lines, CSV logs, Parquet columns).

Such a file can still be damaged: cut short by a full disk, edited by hand, or written by another
version of the code. Each reader here ends in one `DataError` that names the file, the row or column
and the stage that writes it, so `neat` exits 2 with that line instead of a KeyError or a silently
missing section.
"""

from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path
from typing import Iterable

from neat.errors import DataError
from neat.input_files import open_text
from neat.io import iter_jsonl


def _rerun(producer: str) -> str:
    return f"rerun `neat {producer}` to rewrite it"


@contextlib.contextmanager
def _opened(path: Path, producer: str):
    """`path` as text; bytes that are not UTF-8 (a damaged file) end in a DataError naming it."""
    try:
        with open_text(path, f"file written by `neat {producer}`") as fh:
            yield fh
    except UnicodeDecodeError:
        raise DataError(f"{path}: damaged, not UTF-8 text; {_rerun(producer)}") from None


def read_json_output(path: Path, producer: str, expect: type = dict) -> object | None:
    """The JSON in `path` (None if there is no such file); damaged or of the wrong shape → DataError."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    with _opened(path, producer) as fh:
        text = fh.read()
    try:
        value = json.loads(text)
    except RecursionError:
        raise DataError(f"{path}: damaged (nested too deeply); {_rerun(producer)}") from None
    except ValueError as exc:
        where = f"line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else "?"
        raise DataError(f"{path}: damaged or truncated, not valid JSON ({where}); {_rerun(producer)}") from None
    if not isinstance(value, expect):
        raise DataError(f"{path}: damaged, expected a JSON {'object' if expect is dict else 'array'}, "
                        f"found {type(value).__name__}; {_rerun(producer)}")
    return value


def read_jsonl_output(path: Path, producer: str, keys: Iterable[str] = ()) -> list[dict]:
    """The JSON objects of `path`, one a line ([] if there is no such file), each with every one of `keys`;
    a bad line → DataError naming it."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return []
    rows = []
    with _opened(path, producer) as fh:
        for n, row in iter_jsonl(fh, path, lambda n, _: f"{path}: row {n} is damaged or truncated (not valid JSON); "
                                                          f"{_rerun(producer)}"):
            if not isinstance(row, dict):
                raise DataError(f"{path}: row {n} is not a JSON object; {_rerun(producer)}")
            lacking = [k for k in keys if k not in row]
            if lacking:
                raise DataError(f"{path}: row {n} lacks {', '.join(repr(k) for k in lacking)}; {_rerun(producer)}")
            rows.append(row)
    return rows


def read_csv_output(path: Path, producer: str, columns: Iterable[str]) -> list[dict[str, str]]:
    """The rows of the CSV `path` ([] if there is no such file), which must have every one of `columns`."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return []
    with _opened(path, producer) as fh:
        try:
            reader = csv.DictReader(fh)
            require_columns(path, reader.fieldnames or [], columns, producer)
            return list(reader)
        except csv.Error as exc:
            raise DataError(f"{path}: damaged CSV ({exc}); {_rerun(producer)}") from None


def require_columns(path: Path, present: Iterable[str], needed: Iterable[str], producer: str) -> None:
    """DataError naming `path` and every column of `needed` that `present` lacks."""
    have = set(present)
    missing = [c for c in needed if c not in have]
    if missing:
        raise DataError(f"{path}: missing column{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(repr(c) for c in missing)}; not an output of `neat {producer}`? "
                        f"{_rerun(producer)}")


def check_online_entries(path: Path, entries: list) -> list[dict]:
    """`entries` of train/online.json, each a per-round dict; a dev probe must hold its answers (prompt and
    response). A damaged entry is refused, never silently dropped from the online curve."""
    for n, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or "round" not in entry:
            raise DataError(f"{path}: entry {n} is not a per-round entry (no 'round'); {_rerun('train')}")
        dev = entry.get("dev")
        if dev is None:  # a round without dev prompts
            continue
        answers = dev.get("answers") if isinstance(dev, dict) else None
        if not isinstance(answers, list) or not all(
                isinstance(a, dict) and "prompt" in a and isinstance(a.get("response"), str) for a in answers):
            raise DataError(f"{path}: entry {n}: 'dev' lacks its answers (each with prompt and response); "
                            f"{_rerun('train')}")
    return entries


def read_online_curve(path: Path) -> list[dict]:
    """The entries of train/online.json that hold a dev probe, in order ([] without the file)."""
    entries = check_online_entries(path, read_json_output(path, "train", expect=list) or [])
    return [e for e in entries if e.get("dev") is not None]
