"""What a training run records: the per-step log (`<out>/train/log.csv`) and the online curve's summary."""

from __future__ import annotations

import csv
from pathlib import Path

from neat.encoding import ORIGINS
from neat.io import atomic_path

LOG_COLUMNS = (
    ["round", "step", "loss", "rank_loss", "sft_loss", "lr", "tokens_per_s", "grad_norm"]
    + [f"logp_{o}" for o in ORIGINS]
    + [f"reward_{o}" for o in ORIGINS]
    + ["anchor_loss", "rank_acc"]
)


def write_log(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})


def online_summary(rounds_log: list[dict], final: dict | None) -> dict:
    """The online curve in numbers: the dev-prompt reward before each round and after the last, and
    P(positive > negative) of each round's candidates."""
    dev = [e["dev"]["reward_mean"] for e in rounds_log if e.get("dev")] + ([final["reward_mean"]] if final else [])
    return {"online_dev_reward": dev,
            "online_p_positive_over_negative": [e.get("p_positive_over_negative") for e in rounds_log]}
