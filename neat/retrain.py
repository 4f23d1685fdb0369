"""New preference data for scheduled retraining: the newest file under `retrain.incoming` (an S3 prefix or a
local folder, both reached through neat.registry's `Store`)."""

from __future__ import annotations

from pathlib import Path

from neat.data import read_preferences
from neat.errors import DataError

DATA_SUFFIXES = (".jsonl", ".jsonl.gz", ".json")
INCOMING_DIR = Path("data/incoming")


def incoming_store(params, uri: str | None = None):
    """The store (S3 prefix or local folder) holding incoming data: `retrain.incoming`, or `uri`."""
    from neat.registry import store_at

    return store_at(uri or params.retrain.incoming, params.registry)


def newest_incoming(params) -> tuple[str, float] | None:
    """(location, modification time) of the newest data file in `retrain.incoming`, or None."""
    from neat.registry import RegistryError

    where = params.retrain.incoming
    if not where:
        return None
    try:
        found = incoming_store(params).newest("", DATA_SUFFIXES)
    except RegistryError as exc:  # name the key the user set, whatever the store said
        raise DataError(f"retrain.incoming: {exc}") from None
    if found is None:
        return None
    key, mtime = found
    return f"{where.rstrip('/')}/{key}", mtime


def fetch_incoming(params, project: str | Path = ".") -> str | None:
    """Copy the newest incoming file into `data/incoming/` (checked first) and return its project path.

    Returns None when there is nothing new: no incoming location, an empty one, or the newest file
    is the one `paths.data` already points at.
    """
    found = newest_incoming(params)
    if not found:
        return None
    location, _ = found
    folder, _, name = location.rpartition("/")
    rel = INCOMING_DIR / name
    target = Path(project) / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{name}.part")
    incoming_store(params, folder).download(name, tmp)
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
