"""The checks before a model is loaded refuse damaged files and accept every real model we ship (issue 12)."""

from __future__ import annotations

import json
import struct

import pytest

from neat.errors import ModelError
from neat.model_checks import check_config_sizes, check_gguf_header
from neat.models import resolve_source, _smollm2_gguf


def test_shipped_models_pass(tmp_path):
    check_gguf_header(_smollm2_gguf())
    tiny = resolve_source("builtin:tiny-random", tmp_path / "cache", 0).location
    check_config_sizes(tiny + "/config.json", "builtin:tiny-random")


@pytest.mark.parametrize("sizes,words", [({"hidden_size": 0}, "hidden_size is 0"),
                                         ({"num_hidden_layers": 10**9}, "num_hidden_layers is 1000000000"),
                                         ({"vocab_size": -1}, "vocab_size is -1"),
                                         ({"num_attention_heads": True}, "num_attention_heads is True"),
                                         ({"text_config": {"hidden_size": 0}}, "text_config.hidden_size is 0")])
def test_zero_or_absurd_sizes_are_refused_naming_the_key(tmp_path, sizes, words):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "vocab_size": 100} | sizes))
    with pytest.raises(ModelError) as info:
        check_config_sizes(config, str(tmp_path))
    assert str(config) in str(info.value) and words in str(info.value)


def test_a_gguf_damaged_after_its_header_start_is_called_damaged(tmp_path):
    good = _smollm2_gguf()
    damaged = tmp_path / "damaged.gguf"
    data = bytearray(good.read_bytes()[: 1 << 16])  # the header and metadata, but the tensor table cut off
    damaged.write_bytes(bytes(data))
    with pytest.raises(ModelError) as info:
        check_gguf_header(damaged)
    assert "gguf file is damaged" in str(info.value).lower() and "json" not in str(info.value).lower()
    damaged.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 1 << 40))
    with pytest.raises(ModelError, match="damaged"):
        check_gguf_header(damaged)

