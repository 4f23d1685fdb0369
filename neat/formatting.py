"""Metric numbers as the report and `neat compare` print them in their Markdown tables."""

from __future__ import annotations

import math
import numbers

MISSING = "–"  # a metric that was not measured (or is not a finite number)


def format_number(x, digits: int = 3) -> str:
    """`x` with `digits` decimals; MISSING unless it is a finite number."""
    if not isinstance(x, numbers.Real) or not math.isfinite(x):
        return MISSING
    return f"{x:.{digits}f}"


def format_interval(metrics: dict, key: str, digits: int = 3) -> str:
    """`metrics[key]` with its interval `[<key>_ci_low, <key>_ci_high]`; MISSING when the metric is absent."""
    if metrics.get(key) is None:
        return MISSING
    low, high = metrics.get(key + "_ci_low"), metrics.get(key + "_ci_high")
    return f"{format_number(metrics[key], digits)} [{format_number(low, digits)}, {format_number(high, digits)}]"


def format_value_interval(value, interval, digits: int = 3) -> str:
    """`value` with `interval` ([low, high], as online.json keeps them); MISSING when the value is absent."""
    low, high = interval if isinstance(interval, (list, tuple)) and len(interval) == 2 else (None, None)
    return format_interval({"v": value, "v_ci_low": low, "v_ci_high": high}, "v", digits)


ARITHMETIC_LABELS = (("generation", "generation"), ("policy_training", "policy training"),
                     ("reward_training", "training RM"), ("perplexity", "perplexity"))


def describe_arithmetic(arithmetic: dict) -> str:
    """The number formats of a run's parts (`neat.models.arithmetic`, merged over its stages) in one line."""
    parts = [f"{label}: {arithmetic[key]}" for key, label in ARITHMETIC_LABELS if key in arithmetic]
    native = "yes" if arithmetic.get("native_bf16_cpu") else "no"
    return f"{'; '.join(parts)} (CPU with native bf16: {native})"


def judges_in_order(by_judge: dict, headline: str | None) -> list[tuple[str, dict]]:
    """`safety_by_judge`'s items (metrics/evaluate.json), the evaluation's own judge first: metrics files
    store their keys sorted."""
    return sorted(by_judge.items(), key=lambda item: item[0] != headline)
