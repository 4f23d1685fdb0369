"""The content hashes of `neat.io`: one copy each, with the values the former copies gave (the ids and
fingerprints they produce are stored in checkpoints, caches, model cards and the registry)."""

from __future__ import annotations

import hashlib
import json

from neat.io import file_digest, files_digest, fingerprint_of, work_dir_for


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
