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
    """The online curve in numbers: the dev-prompt reward before each round and after the last, its rise from the
    first probe to the last, and P(positive > negative) of each round's candidates."""
    from neat.diagnostics import paired_gain

    probes = [e["dev"] for e in rounds_log if e.get("dev")] + ([final] if final else [])
    gain = paired_gain(probes[0]["answers"], probes[-1]["answers"]) if len(probes) > 1 else None
    return {"online_dev_reward": [p["reward_mean"] for p in probes],
            "online_dev_reward_gain": gain,  # last probe − first, paired over the dev prompts, with its interval
            "online_p_positive_over_negative": [e.get("p_positive_over_negative") for e in rounds_log],
            "online_p_positive_over_negative_ci": [e.get("p_positive_over_negative_ci") for e in rounds_log]}
