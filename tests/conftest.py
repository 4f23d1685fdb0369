"""Shared fixtures. Tests that need ../shared data skip cleanly when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
HH_SLICE = SHARED / "data/hh-rlhf/harmless-base-test.first1000.jsonl.gz"
XSTEST = SHARED / "data/xstest/xstest_prompts.csv"

# Offline and quiet, for every test and every subprocess it starts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `make test` runs two pytest workers (pytest-xdist) on the machines' two cores: one torch thread each,
# also in the subprocesses they start, instead of two workers of two threads fighting over two cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
# Converted builtin models are cached once per checkout, shared by every test and subprocess.
os.environ.setdefault("NEAT_CACHE_DIR", str(ROOT / ".cache" / "neat"))


@pytest.fixture(autouse=True)
def _generation_defaults():
    """Stages set `generate`'s defaults from their params (engine, batch budget, CPU dtype), also from
    module-scoped fixtures that run stages: every test starts and ends with the library's own defaults,
    so a stage run with bf16 somewhere does not change another test's numbers."""
    from neat import generation

    def reset():
        generation._default_engine, generation._default_batch_tokens = "lean", 0
        generation._default_decode_tokens = 0
        generation._default_merge_lora = False
        generation._default_cpu_dtype = "float32"

    reset()
    yield
    reset()


@pytest.fixture
def hh_slice() -> Path:
    if not HH_SLICE.exists():
        pytest.skip(f"shared HH-RLHF slice not found at {HH_SLICE}")
    return HH_SLICE


@pytest.fixture
def xstest_csv() -> Path:
    if not XSTEST.exists():
        pytest.skip(f"shared XSTest CSV not found at {XSTEST}")
    return XSTEST


# The schema's defaults before they were made equal to params.yaml (issue 14). Tests that build their
# params from a partial tree were written, and their numbers pinned, against these: they keep them
# explicitly through `former_defaults`, so aligning the schema with params.yaml moved none of them.
FORMER_DEFAULTS = {
    "paths": {"data": "data/demo/hh_demo.jsonl", "safety_prompts": "data/demo/safety_prompts.csv",
              "refusal_examples": "data/demo/refusal_examples.jsonl"},
    "data": {"max_train_prompts": None, "max_benign_prompts": 0, "max_harmful_prompts": 0},
    "policy": {"lora": {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}},
    "reward": {"epochs": 2, "lr": 5e-5, "max_length": 256, "bf16_autocast": False},
    "expand": {"k_pos": 2, "k_neg": 2, "demo_origins": ["positive", "negative"], "max_new_tokens": 48},
    "train": {"rounds": 2, "rank_weight": 1.0, "sft_target": "best", "anchor_weight": 0.0, "lr": 1e-4,
              "bf16_autocast": False, "loop_probes": False},
    "generation": {"cpu_dtype": "float32"},
    "evaluate": {"max_prompts": 48, "max_safety_prompts": None, "max_new_tokens": 48, "bf16_autocast": False},
    "gate": {"metrics": []},
}


def former_defaults(tree: dict, base: dict | None = None) -> dict:
    """`tree` over `FORMER_DEFAULTS`: what the tree's params were before the schema's defaults changed."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (base or FORMER_DEFAULTS).items()}
    for key, value in tree.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = former_defaults(value, out[key])
        else:
            out[key] = value
    return out


def make_test_params(tree: dict, **sections):
    """Validated params for a test: `tree`, then each of `sections` merged into its section, over
    `FORMER_DEFAULTS` (the one way the test modules build their params)."""
    from neat.config import validate_params

    tree = {k: (dict(v) if isinstance(v, dict) else v) for k, v in tree.items()}
    for name, values in sections.items():
        tree.setdefault(name, {}).update(values)
    return validate_params(former_defaults(tree))
