"""`neat.io`: the content hashes, one copy each, with the values the former copies gave (the ids and
fingerprints they produce are stored in checkpoints, caches, model cards and the registry); the one
JSON-lines reader and writer."""

from __future__ import annotations

import hashlib
import json

import pytest

from neat.errors import DataError
from neat.io import (
    file_digest,
    files_digest,
    fingerprint_of,
    iter_jsonl,
    read_jsonl,
    work_dir_for,
    write_jsonl_atomic,
)


def test_fingerprint_of_hashes_the_description_then_the_files(tmp_path):
    data = tmp_path / "scored.parquet"
    data.write_bytes(b"x" * (5 << 20) + b"tail")  # over one read block
    desc = {"train": {"lr": 1e-3}, "seed": 0}
    want = hashlib.sha256(json.dumps(desc, sort_keys=True).encode() + data.read_bytes()).hexdigest()[:16]
    assert fingerprint_of(desc, data) == want
    assert fingerprint_of(desc) != want and fingerprint_of(desc | {"seed": 1}, data) != want


def test_file_digest_is_the_sha256_of_the_bytes(tmp_path):
    f = tmp_path / "prefs.jsonl"
    f.write_bytes(b'{"prompt": "hi"}\n' * 1000)
    assert file_digest(f) == hashlib.sha256(f.read_bytes()).hexdigest()[:16]


def test_files_digest_covers_names_sizes_and_content(tmp_path):
    a, b = tmp_path / "config.json", tmp_path / "model.safetensors"
    a.write_text("{}")
    b.write_bytes(b"\x00\x01" * 10)
    h = hashlib.sha256()
    for f in (a, b):  # the layout `models.checkpoint_id` has always hashed
        h.update(f"{f.name}\0{f.stat().st_size}\0".encode() + f.read_bytes())
    assert files_digest([a, b], tmp_path) == h.hexdigest()[:16]
    b.write_bytes(b"\x00\x02" * 10)  # same name and size, one byte changed
    assert files_digest([a, b], tmp_path) != h.hexdigest()[:16]


def test_work_dir_for_keys_the_outputs_folder(tmp_path):
    out = (tmp_path / "outputs").resolve()
    key = hashlib.sha256(str(out).encode()).hexdigest()[:8]
    assert work_dir_for(tmp_path / "ck", out, "score") == tmp_path / "ck" / f"outputs-{key}" / "score"


def test_jsonl_round_trip_skips_blank_lines_and_writes_strict_json(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl_atomic(path, [{"a": 1, "text": "café"}, {"a": float("nan")}])
    assert path.read_text(encoding="utf-8") == '{"a": 1, "text": "café"}\n{"a": null}\n'
    path.write_text('{"a": 1}\n\n  \n[2]\n', encoding="utf-8")
    assert read_jsonl(path) == [{"a": 1}, [2]]
    assert list(iter_jsonl(["", "3", " ", "{}"], path)) == [(2, 3), (4, {})]  # numbered as lines of the file


@pytest.mark.parametrize("line, reason", [("{oops", "Expecting property name enclosed in double quotes"),
                                          ("[" * 100_000 + "]" * 100_000, "RecursionError"),
                                          ("1" * 5000, "ValueError")])  # more digits than int() takes
def test_a_line_that_is_not_json_is_one_error_naming_file_and_line(tmp_path, line, reason):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_jsonl(path)
    assert str(info.value) == f"{path}: line 2: not valid JSON ({reason})"
    with pytest.raises(DataError, match=r"^rows.jsonl row 2 is bad$"):
        list(iter_jsonl(path.read_text().splitlines(), path, lambda n, _: f"rows.jsonl row {n} is bad"))


def test_a_missing_jsonl_file_says_what_to_run(tmp_path):
    with pytest.raises(DataError, match="none.jsonl: not found \\(run the stage that writes it first\\)"):
        read_jsonl(tmp_path / "none.jsonl")
