"""params.yaml and -S overrides: what used to pass silently with the wrong value is refused (issue 12)."""

from __future__ import annotations

import os

import pytest

from neat.config import load_params, parse_override
from neat.errors import ConfigError
from tests.conftest import ROOT

PARAMS = ROOT / "params.yaml"


def test_text_override_keeps_a_hash_and_everything_after_it():
    params = load_params(PARAMS, ["paths.data=/d/x #2.jsonl", "expand.negative_prompt=be #1: rude"])
    assert params.paths.data == "/d/x #2.jsonl"
    assert params.expand.negative_prompt == "be #1: rude"


def test_optional_text_override_null_is_none_and_numbers_stay_text():
    params = load_params(PARAMS, ["registry.uri=null", "data.split_salt=123"])
    assert params.registry.uri is None and params.data.split_salt == "123"


def test_hash_in_a_non_text_override_is_refused_not_dropped():
    with pytest.raises(ConfigError, match="train.lr.*'#'"):
        load_params(PARAMS, ["train.lr=1e-4 #fast"])


def test_numbers_and_lists_still_parse():
    params = load_params(PARAMS, ["train.lr=2e-5", "policy.lora.target_modules=[q_proj, v_proj]"])
    assert params.train.lr == 2e-5 and params.policy.lora.target_modules == ["q_proj", "v_proj"]


def test_duplicate_section_is_refused(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  lr: 0.1\nseed: 1\ntrain:\n  rounds: 3\n")
    with pytest.raises(ConfigError, match=r"p.yaml.*line 4.*'train' appears twice.*line 1"):
        load_params(path)


@pytest.mark.parametrize("override", ["train.sft_weight=.inf", "train.max_grad_norm=.nan", "gate.margin=.inf",
                                      "train.weight_decay=.Inf", "reward.lr=.nan"])
def test_inf_and_nan_are_refused(override):
    with pytest.raises(ConfigError, match="finite"):
        load_params(PARAMS, [override])


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_params_file_is_refused(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="empty.yaml: params file is empty"):
        load_params(path)


def test_alias_bomb_is_refused_in_one_short_line(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="alias") as info:
        load_params(path)
    assert len(str(info.value)) < 400


def test_huge_integer_is_one_error(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("seed: " + "9" * 5000 + "\n")
    with pytest.raises(ConfigError, match="big.yaml"):
        load_params(path)


def test_params_that_is_a_directory_or_a_fifo_is_refused_without_hanging(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_params(tmp_path)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_params(fifo)


def test_override_without_equals_quotes_at_most_a_little():
    with pytest.raises(ConfigError) as info:
        parse_override("x" * 100_000)
    assert len(str(info.value)) < 700
