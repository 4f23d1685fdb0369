"""The candidates file: written atomically, read back as written, and refused with one line when it is
missing, damaged or lacks a column the reader needs."""

from __future__ import annotations

import pytest

from neat.candidates import CANDIDATE_COLUMNS, SCORED_COLUMNS, read_candidates, write_candidates
from neat.errors import DataError

ROW = {"prompt_id": "p1", "prompt": [{"role": "user", "content": "hi"}], "origin": "positive", "response": "hello",
       "flags": ["short"], "reward": 0.25}


def test_candidates_round_trip(tmp_path):
    path = tmp_path / "expand" / "candidates.parquet"
    write_candidates(path, [ROW, ROW | {"origin": "negative", "reward": None}])
    rows = read_candidates(path, SCORED_COLUMNS, "score")
    assert rows == [ROW, ROW | {"origin": "negative", "reward": None}]
    assert [p.name for p in path.parent.iterdir()] == ["candidates.parquet"]  # no temporary file left behind


def test_a_missing_column_names_the_file_the_column_and_the_stage(tmp_path):
    path = tmp_path / "candidates.parquet"
    write_candidates(path, [{k: v for k, v in ROW.items() if k != "reward"}])
    assert set(CANDIDATE_COLUMNS) <= set(read_candidates(path)[0])
    with pytest.raises(DataError, match=r"candidates.parquet: missing column 'reward'; .*neat score"):
        read_candidates(path, SCORED_COLUMNS, "score")


def test_a_missing_or_damaged_file_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="candidates not found"):
        read_candidates(tmp_path / "none.parquet")
    damaged = tmp_path / "damaged.parquet"
    damaged.write_bytes(b"PAR1 cut short")
    with pytest.raises(DataError, match="damaged.parquet: not a readable Parquet file"):
        read_candidates(damaged)
