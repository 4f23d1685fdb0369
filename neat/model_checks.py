"""Checks on a model reference's files before anything is allocated or converted.

A Hugging Face `config.json` with `hidden_size: 0` or `num_hidden_layers: 10**9` would make
transformers allocate nothing useful or try to allocate terabytes (and die far from the cause); a
GGUF file whose header is damaged would surface as a confusing message about a "JSON config". Each
check ends in one `ModelError` that names the file and the key or the damage.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from neat.errors import ModelError

# the largest value each size may take: well above any released model, far below what would exhaust memory
SIZE_LIMITS = {
    "hidden_size": 1 << 16, "n_embd": 1 << 16, "d_model": 1 << 16, "dim": 1 << 16,
    "num_hidden_layers": 1024, "n_layer": 1024, "num_layers": 1024, "n_layers": 1024,
    "num_attention_heads": 1024, "n_head": 1024, "num_key_value_heads": 1024,
    "intermediate_size": 1 << 20, "n_inner": 1 << 20, "ffn_dim": 1 << 20,
    "vocab_size": 1 << 22,
    "max_position_embeddings": 1 << 24, "n_positions": 1 << 24,
}
MAX_PARAMETERS = 2 * 10**12  # an estimate above this is a damaged config, not a model we could load
GGUF_VERSIONS = (2, 3)  # what the GGUF reader of transformers handles
GGUF_MAX_COUNT = 1 << 24  # tensors or metadata entries in one header, at most


def check_config_sizes(config_path: Path, ref: str) -> None:
    """Refuse a config.json that is not a JSON object or whose sizes are zero, negative, not integers or absurd."""
    try:
        config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    except (ValueError, RecursionError):
        raise ModelError(f"cannot load model '{ref}': {config_path} is not valid JSON") from None
    except OSError as exc:
        raise ModelError(f"cannot load model '{ref}': cannot read {config_path} ({exc.strerror})") from None
    if not isinstance(config, dict):
        raise ModelError(f"cannot load model '{ref}': {config_path} is not a JSON object")
    for section, values in _sections(config):
        for key, limit in SIZE_LIMITS.items():
            value = values.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
                raise ModelError(f"{config_path}: {section}{key} is {repr(value)[:40]}; a model size must be a whole "
                                 f"number from 1 to {limit} (damaged or hand-edited config?)")
        estimate = _parameter_estimate(values)
        if estimate > MAX_PARAMETERS:
            raise ModelError(f"{config_path}: its sizes describe a model of about {estimate:.1e} parameters, "
                             f"more than {MAX_PARAMETERS:.0e}; refusing to allocate it (damaged config?)")


def _sections(config: dict):
    yield "", config
    for name in ("text_config", "decoder", "encoder"):  # composite configs keep the language model's sizes here
        if isinstance(config.get(name), dict):
            yield f"{name}.", config[name]


def _parameter_estimate(values: dict) -> int:
    def first(*keys: str) -> int:
        return next((values[k] for k in keys if isinstance(values.get(k), int)), 0)

    hidden = first("hidden_size", "n_embd", "d_model", "dim")
    layers = first("num_hidden_layers", "n_layer", "num_layers", "n_layers")
    inter = first("intermediate_size", "n_inner", "ffn_dim") or 4 * hidden
    vocab = first("vocab_size")
    return 2 * vocab * hidden + layers * (4 * hidden * hidden + 3 * hidden * inter)


def check_gguf_header(path: Path) -> None:
    """Refuse a GGUF file whose header (version, counts, metadata, tensor table) cannot be parsed."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(24)
    except OSError as exc:
        raise ModelError(f"cannot read '{path}': {exc.strerror}") from None
    if len(head) < 24:
        raise ModelError(f"'{path}': the GGUF file is damaged (header cut short at {len(head)} bytes)")
    version, n_tensors, n_kv = struct.unpack("<IQQ", head[4:24])
    if version not in GGUF_VERSIONS:
        raise ModelError(f"'{path}': the GGUF file is damaged or of an unsupported version "
                         f"(header says version {version}; expected one of {GGUF_VERSIONS})")
    if n_tensors > GGUF_MAX_COUNT or n_kv > GGUF_MAX_COUNT:
        raise ModelError(f"'{path}': the GGUF file is damaged (header counts {n_tensors} tensors and "
                         f"{n_kv} metadata entries)")
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        if not reader.tensors:
            raise ValueError("no tensors")
    except Exception as exc:  # noqa: BLE001 - the reader raises many kinds for a damaged header
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ModelError(f"'{path}': the GGUF file is damaged (its header cannot be parsed: {detail})") from None
