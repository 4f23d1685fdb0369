"""How the report and `neat compare` print metric numbers and intervals."""

from __future__ import annotations

import numpy as np

from neat.formatting import MISSING, format_interval, format_number


def test_format_number_prints_finite_numbers_and_a_dash_for_the_rest():
    assert format_number(0.12345) == "0.123" and format_number(2, 1) == "2.0"
    assert format_number(np.float32(0.5), 2) == "0.50" and format_number(np.int64(3)) == "3.000"
    assert [format_number(x) for x in (None, float("nan"), float("inf"), "0.5")] == [MISSING] * 4


def test_format_interval_reads_the_ci_keys_beside_the_metric():
    m = {"win_rate": 0.625, "win_rate_ci_low": 0.5, "win_rate_ci_high": None}
    assert format_interval(m, "win_rate", 2) == "0.62 [0.50, –]"
    assert format_interval(m, "perplexity") == MISSING  # not measured: no empty brackets
