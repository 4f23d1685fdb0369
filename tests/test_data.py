import gzip
import json

import pytest

from neat.data import (
    SKIP_REASONS,
    PreferencePair,
    parse_hh_dialogue,
    read_pairs,
    read_preferences,
    split_pairs,
    to_pair,
    write_pairs,
)
from neat.errors import DataError
from tests.conftest import ROOT


def hh(*turns):
    return "".join(f"\n\n{role}: {text}" for role, text in turns)


GOOD = {
    "chosen": hh(("Human", "hi"), ("Assistant", "hello"), ("Human", "how to bake bread?"), ("Assistant", "Knead and bake.")),
    "rejected": hh(("Human", "hi"), ("Assistant", "hello"), ("Human", "how to bake bread?"), ("Assistant", "No.")),
}


def test_hh_dialogue_is_split_into_prompt_and_responses():
    pair = to_pair(GOOD)
    assert pair.prompt == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how to bake bread?"},
    ]
    assert (pair.chosen, pair.rejected) == ("Knead and bake.", "No.")
    assert len(pair.prompt_id) == 16 and pair.prompt_id == to_pair(dict(GOOD, rejected=GOOD["rejected"].replace("No.", "Nah."))).prompt_id


def test_trl_formats():
    s = to_pair({"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Rome."})
    assert s.prompt == [{"role": "user", "content": "Capital of France?"}] and s.chosen == "Paris."
    conv = to_pair({
        "prompt": [{"role": "user", "content": "Capital of France?"}],
        "chosen": [{"role": "assistant", "content": "Paris."}],
        "rejected": [{"role": "assistant", "content": "Rome."}],
    })
    assert conv.prompt_id == s.prompt_id and conv.rejected == "Rome."
    implicit = to_pair({
        "chosen": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}],
        "rejected": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Rome."}],
    })
    assert implicit.prompt_id == s.prompt_id


BAD_ROWS = {
    "missing_field": {"chosen": GOOD["chosen"]},
    "wrong_type": {"chosen": 3, "rejected": GOOD["rejected"]},
    "identical": {"chosen": GOOD["chosen"], "rejected": GOOD["chosen"]},
    "no_assistant_turn": {"chosen": hh(("Human", "a"), ("Human", "b")), "rejected": hh(("Human", "a"), ("Human", "c"))},
    "roles_out_of_order": {
        "chosen": hh(("Human", "a"), ("Assistant", "b"), ("Assistant", "c")),
        "rejected": hh(("Human", "a"), ("Assistant", "b"), ("Assistant", "d")),
    },
    "empty_response": {"chosen": hh(("Human", "a"), ("Assistant", "  ")), "rejected": hh(("Human", "a"), ("Assistant", "b"))},
    "prompt_mismatch": {"chosen": hh(("Human", "a"), ("Assistant", "b")), "rejected": hh(("Human", "x"), ("Assistant", "c"))},
    "not_an_object": [1, 2],
    "invalid_unicode": {"chosen": hh(("Human", "a"), ("Assistant", "b\ud800")),
                        "rejected": hh(("Human", "a"), ("Assistant", "c"))},
}


def test_every_bad_row_reason_is_counted(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps(GOOD), json.dumps(GOOD), "{not json"] + [json.dumps(row) for row in BAD_ROWS.values()]
    path.write_text("\n".join(lines) + "\n")
    result = read_preferences(path)
    assert result.rows_read == len(lines) and result.rows_kept == 1
    expected = {reason: 1 for reason in BAD_ROWS} | {"duplicate": 1, "invalid_json": 1}
    assert dict(result.skipped) == expected
    assert set(expected) == set(SKIP_REASONS)
    assert result.examples["invalid_json"] == 3


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "no rows (empty file)"),
        (b"this is not json\nnor this\n", "not JSON lines"),
        (json.dumps({"chosen": "x", "rejected": "x"}).encode() + b"\n", "no usable row among 1 (identical=1)"),
        (b"\xff\xfe\x00garbage", "not UTF-8 text"),
        (gzip.compress(json.dumps(GOOD).encode() * 50, mtime=0)[:40], "corrupt or truncated gzip"),
    ],
    ids=["empty", "not-json", "identical", "not-utf8", "truncated-gzip"],  # stable: parallel workers compare ids
)
def test_bad_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        read_preferences(path)
    assert str(info.value).startswith(str(path)) and message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        read_preferences(tmp_path / "absent.jsonl")


def test_shared_hh_slice_parses(hh_slice):
    result = read_preferences(hh_slice)
    assert result.rows_read == 1000
    assert result.rows_kept >= 990
    assert all(p.prompt[-1]["role"] == "user" and p.chosen and p.rejected for p in result.pairs)
    assert all(p.prompt[0]["role"] == "user" for p in result.pairs)


def test_split_is_deterministic_and_disjoint(hh_slice):
    pairs = read_preferences(hh_slice).pairs
    a = split_pairs(pairs, 0.2, 0.1, salt="s")
    b = split_pairs(list(reversed(pairs)), 0.2, 0.1, salt="s")
    ids = {k: {p.prompt_id for p in v} for k, v in a.items()}
    assert ids == {k: {p.prompt_id for p in v} for k, v in b.items()}
    assert not (ids["train"] & ids["eval"]) and not (ids["train"] & ids["judge"]) and not (ids["eval"] & ids["judge"])
    assert sum(len(v) for v in a.values()) == len(pairs)
    assert 0.15 < len(a["eval"]) / len(pairs) < 0.25
    other = split_pairs(pairs, 0.2, 0.1, salt="other")
    assert {p.prompt_id for p in other["eval"]} != ids["eval"]


def test_same_prompt_never_straddles_splits():
    pairs = [PreferencePair("p%d" % (i % 7), [{"role": "user", "content": str(i % 7)}], f"c{i}", f"r{i}") for i in range(70)]
    splits = split_pairs(pairs, 0.3, 0.3)
    homes = {}
    for name, items in splits.items():
        for p in items:
            assert homes.setdefault(p.prompt_id, name) == name


def test_write_read_round_trip(tmp_path):
    pair = to_pair(GOOD)
    write_pairs(tmp_path / "x.jsonl", [pair])
    assert read_pairs(tmp_path / "x.jsonl") == [pair]
    assert not list(tmp_path.glob(".*tmp"))


def test_embedded_demo_data_is_clean():
    result = read_preferences(ROOT / "data/demo/hh_demo.jsonl")
    assert result.rows_kept == result.rows_read >= 150
    parsed = [parse_hh_dialogue(json.loads(line)["chosen"]) for line in (ROOT / "data/demo/hh_demo.jsonl").open()]
    assert any(len(m) > 2 for m in parsed)


# ---------------------------------------------------------------- hostile files (issue 12)


def test_a_huge_integer_or_deep_nesting_skips_only_that_row(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + '{"chosen": ' + "9" * 5000 + "}\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    result = read_preferences(path)
    assert result.rows_kept == 1 and result.skipped["invalid_json"] == 2


def test_a_fifo_is_refused_without_blocking(tmp_path):
    import os

    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="pipe.jsonl: data file is a named pipe"):
        read_preferences(fifo)


def test_a_symlink_loop_is_not_reported_as_missing(tmp_path):
    (tmp_path / "a.jsonl").symlink_to(tmp_path / "b.jsonl")
    (tmp_path / "b.jsonl").symlink_to(tmp_path / "a.jsonl")
    with pytest.raises(DataError, match="symbolic link loop"):
        read_preferences(tmp_path / "a.jsonl")


def test_a_gzip_bomb_is_refused_without_holding_it(tmp_path):
    import gzip
    import resource

    path = tmp_path / "bomb.jsonl.gz"
    with gzip.open(path, "wb", compresslevel=9) as fh:
        block = b"\0" * (1 << 20)
        for _ in range(1024):  # 1 GiB of zeros, ~1 MB on disk
            fh.write(block)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DataError, match="bomb.jsonl.gz: gzip expands beyond"):
        read_preferences(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KiB: far below 1 GiB
