"""`set_params_in_file`: overrides written into params.yaml by a YAML round trip, comments and layout kept."""

from __future__ import annotations

import difflib
import shutil

import pytest

from neat.config import load_params
from neat.errors import ConfigError
from neat.workspace import set_params_in_file
from tests.conftest import ROOT


@pytest.fixture
def params_file(tmp_path):
    shutil.copy2(ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path / "params.yaml"


def _changed_lines(before: str, after: str) -> list[str]:
    return [ln for ln in difflib.ndiff(before.splitlines(), after.splitlines()) if ln.startswith("+ ")]


def test_values_change_and_comments_survive(params_file):
    before = params_file.read_text()
    overrides = {"train.lr": 1e-5, "data.max_train_prompts": None, "policy.lora.target_modules": ["q_proj", "on"],
                 "data.split_salt": "yes", "paths.data": "d/x #2.jsonl", "expand.negative_prompt": "be rude",
                 "reward.train": False}
    set_params_in_file(params_file, overrides)
    after = params_file.read_text()

    params = load_params(params_file)
    assert params.train.lr == 1e-5 and params.data.max_train_prompts is None and params.reward.train is False
    assert params.policy.lora.target_modules == ["q_proj", "on"] and params.data.split_salt == "yes"
    assert params.paths.data == "d/x #2.jsonl" and params.expand.negative_prompt == "be rude"
    comments = [ln[ln.index("#"):] for ln in before.splitlines() if "#" in ln]
    assert all(c in after for c in comments)  # every comment, including those on the changed lines
    assert "  max_train_prompts: null                # prompts the policy trains on per round" in after
    assert "    target_modules: [q_proj, \"on\"]" in after and "  lr: 1.0e-05" in after
    assert len(_changed_lines(before, after)) == len(overrides)  # no other line moved


def test_unchanged_values_leave_the_file_byte_identical(params_file):
    before = params_file.read_bytes()
    set_params_in_file(params_file, {"seed": 0, "registry.uri": None, "train.lr": 3.0e-4})
    assert params_file.read_bytes() == before


@pytest.mark.parametrize("key, value, message", [
    ("train.nope", 1, "train.nope"),
    ("train.lr", "fast", "train.lr"),
    ("policy.lora", {"r": 4}, "'policy.lora' is a section; override its keys one at a time"),
    ("train.warmup_steps", 3, "'train.warmup_steps' is not written in the file; add it before overriding"),
])
def test_bad_keys_are_refused_in_one_line_and_the_file_kept(params_file, key, value, message):
    text = params_file.read_text().replace("  warmup_steps: 0\n", "")
    params_file.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        set_params_in_file(params_file, {key: value})
    assert "\n" not in str(err.value)
    assert params_file.read_text() == text
