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
# Converted builtin models are cached once per checkout, shared by every test and subprocess.
os.environ.setdefault("NEAT_CACHE_DIR", str(ROOT / ".cache" / "neat"))


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
