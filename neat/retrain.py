"""New preference data for scheduled retraining: the newest file under `retrain.incoming`."""

from __future__ import annotations

import shutil
from pathlib import Path

from neat.data import read_preferences
from neat.errors import DataError

DATA_SUFFIXES = (".jsonl", ".jsonl.gz", ".json")
INCOMING_DIR = Path("data/incoming")


def _is_data(name: str) -> bool:
    return name.endswith(DATA_SUFFIXES)


def newest_incoming(params) -> tuple[str, float] | None:
    """(location, modification time) of the newest data file in `retrain.incoming`, or None."""
    where = params.retrain.incoming
    if not where:
        return None
    if where.startswith("s3://"):
        from neat.registry import S3Store

        store = S3Store(where, params.registry.endpoint_url, params.registry.region)
        pages = store._call("listing of incoming data",
                            lambda: list(store.client.get_paginator("list_objects_v2").paginate(
                                Bucket=store.bucket, Prefix=store._key(""))))
        objects = [o for page in pages or [] for o in page.get("Contents", []) if _is_data(o["Key"])]
        if not objects:
            return None
        best = max(objects, key=lambda o: (o["LastModified"], o["Key"]))
        return f"s3://{store.bucket}/{best['Key']}", best["LastModified"].timestamp()
    folder = Path(where)
    if not folder.is_dir():
        raise DataError(f"{folder}: retrain.incoming folder not found")
    files = [p for p in folder.iterdir() if p.is_file() and _is_data(p.name)]
    if not files:
        return None
    best = max(files, key=lambda p: (p.stat().st_mtime, p.name))
    return str(best), best.stat().st_mtime


def fetch_incoming(params, project: str | Path = ".") -> str | None:
    """Copy the newest incoming file into `data/incoming/` (checked first) and return its project path.

    Returns None when there is nothing new: no incoming location, an empty one, or the newest file
    is the one `paths.data` already points at.
    """
    found = newest_incoming(params)
    if not found:
        return None
    location, _ = found
    name = location.rsplit("/", 1)[-1]
    rel = INCOMING_DIR / name
    target = Path(project) / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{name}.part")
    if location.startswith("s3://"):
        from neat.registry import S3Store

        store = S3Store(location.rsplit("/", 1)[0], params.registry.endpoint_url, params.registry.region)
        store._call(f"download of {location}", store.client.download_file, store.bucket, store._key(name), str(tmp))
    else:
        shutil.copyfile(location, tmp)
    if str(rel) == params.paths.data and target.exists() and _same_content(tmp, target):
        tmp.unlink()  # the newest file is the one already in use (same name, same bytes)
        return None
    try:
        read_preferences(tmp, params.data.format)  # refuse unusable data before it replaces anything
    except DataError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{location}: {str(exc).split(': ', 1)[-1]}") from None
    tmp.replace(target)
    return str(rel)


def _same_content(a: Path, b: Path) -> bool:
    import filecmp

    return filecmp.cmp(a, b, shallow=False)
