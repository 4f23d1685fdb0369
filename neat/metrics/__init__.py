"""NEAT's evaluation metrics as local `evaluate` modules, loadable without the Hugging Face Hub.

Each metric lives in ``neat/metrics/<name>/<name>.py`` (shipped as package data) and is an
``evaluate.Metric`` subclass. ``evaluate.load`` accepts a local path in two forms: the script itself
(``.../win_rate/win_rate.py``) or a directory holding a script of the same name (``.../win_rate``).
Given a path that exists, evaluate 0.4 never contacts the Hub: it copies the script into its dynamic
modules cache (``$HF_MODULES_CACHE``, default ``~/.cache/huggingface/modules``) and imports it from
there. A bare name such as ``"accuracy"`` would instead be fetched from the Hub, which fails offline;
so always go through `load_metric`.

    >>> from neat.metrics import load_metric
    >>> load_metric("win_rate").compute(scores_a=[1.0, 0.0], scores_b=[0.0, 0.0])["win_rate"]
    0.75
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["METRIC_NAMES", "metric_path", "load_metric"]

METRIC_NAMES: tuple[str, ...] = ("pairwise_accuracy", "win_rate", "refusal_rate")

_HERE = Path(__file__).resolve().parent


def metric_path(name: str) -> Path:
    """Directory of the metric module ``name`` inside the installed package."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; available: {', '.join(METRIC_NAMES)}")
    path = _HERE / name
    if not (path / f"{name}.py").is_file():
        raise FileNotFoundError(f"metric module {path / (name + '.py')} is missing from the installed package")
    return path


def default_cache_dir() -> Path:
    """Where evaluate may keep per-metric scratch data: ``$NEAT_CACHE_DIR/evaluate`` or a temp dir."""
    root = os.environ.get("NEAT_CACHE_DIR")
    return Path(root, "evaluate") if root else Path(tempfile.gettempdir(), "neat-evaluate")


def load_metric(name: str, *, cache_dir: str | os.PathLike | None = None, keep_in_memory: bool = True, **kwargs):
    """``evaluate.load`` the local module ``name`` (one of `METRIC_NAMES`); never touches the network.

    Inputs are kept in memory by default (no Arrow scratch files); ``cache_dir`` is where evaluate
    would put them otherwise. Extra ``kwargs`` go to ``evaluate.load``.
    """
    import evaluate  # deferred: importing evaluate pulls in datasets, pyarrow, ...

    path = metric_path(name)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    return evaluate.load(str(path), cache_dir=str(cache), keep_in_memory=keep_in_memory, **kwargs)
