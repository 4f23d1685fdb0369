"""The candidates file: a prompt's candidate responses, one row each, as Parquet.

`neat expand` writes it (`expand/candidates.parquet`), `neat score` adds a reward to every row
(`score/candidates.parquet`), and the trainer writes one per online round. A reader asks only for
the columns it uses; a file without one of them is one `DataError` naming the file and the column.
"""

from __future__ import annotations

from pathlib import Path

from neat.errors import DataError
from neat.input_files import check_regular_file
from neat.io import atomic_path
from neat.stage_inputs import require_columns

# every column of a candidate row as sampling writes it (neat.steering), dataset responses included
SAMPLED_COLUMNS = (
    "prompt_id", "prompt", "origin", "response", "steering_prompt", "n_demos", "generation",
    "seed", "policy_id", "round", "n_tokens", "flags", "degenerate",
)
CANDIDATE_COLUMNS = ("prompt_id", "prompt", "response", "origin")  # what every later stage reads of a candidate
SCORED_COLUMNS = CANDIDATE_COLUMNS + ("reward",)


def write_candidates(path: str | Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = list(dict.fromkeys(k for r in rows for k in r))  # pyarrow takes the columns from the first row only
    table = pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows])
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_candidates(path: str | Path, columns: tuple[str, ...] = CANDIDATE_COLUMNS, producer: str = "expand") -> list[dict]:
    """The rows of a candidates Parquet file, which must have every one of `columns` (else one DataError)."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise DataError(f"{path}: candidates not found (run the stage that writes it first)")
    check_regular_file(path, "candidates file")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    require_columns(path, table.column_names, columns, producer)
    return table.to_pylist()
