"""Bootstrap intervals (neat.stats): widths, determinism by seed, paired comparisons, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from neat.stats import (bootstrap_ci, jackknife_ci, mean_ci, paired_bootstrap_ci, rate_with_ci, ratio_ci,
                        two_sample_bootstrap_ci)


def test_bootstrap_all_equal_values_give_zero_width_interval():
    point, low, high = bootstrap_ci([0.3] * 50)
    assert point == pytest.approx(0.3) and low == pytest.approx(0.3) and high == pytest.approx(0.3)


def test_bootstrap_bernoulli_half_interval_has_the_normal_width():
    values = np.array([1.0] * 200 + [0.0] * 200)
    np.random.default_rng(1).shuffle(values)
    point, low, high = bootstrap_ci(values, n_resamples=2000)
    assert point == 0.5
    assert low < 0.5 < high
    assert (high - low) == pytest.approx(2 * 1.96 * 0.025, abs=0.03)


def test_bootstrap_is_deterministic_by_seed():
    values = np.random.default_rng(0).normal(size=60)
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)


def test_bootstrap_other_statistics_and_alpha():
    values = np.arange(101, dtype=float)
    point, low, high = bootstrap_ci(values, statistic=np.median)
    assert point == 50.0 and low < 50 < high
    loop = bootstrap_ci(values, statistic=lambda v: float(np.median(v)))  # no axis=: looped, same draws
    assert loop == pytest.approx((point, low, high))
    narrow = bootstrap_ci(values, alpha=0.5)
    assert low < narrow[1] <= narrow[2] < high


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [float("inf")]])
def test_bootstrap_rejects_empty_or_non_finite(bad):
    with pytest.raises(ValueError):
        bootstrap_ci(bad)


def test_bootstrap_rejects_bad_settings():
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci([1.0, 2.0], alpha=1.5)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci([1.0, 2.0], n_resamples=0)


def test_paired_bootstrap_constant_shift_and_win_rate():
    b = np.random.default_rng(0).normal(size=40)
    assert paired_bootstrap_ci(b + 1.0, b) == pytest.approx((1.0, 1.0, 1.0))
    a, b = [3.0, 1.0, 2.0, 2.0], [1.0, 2.0, 2.0, 0.0]  # win, loss, tie, win
    point, low, high = paired_bootstrap_ci(a, b, "win_rate")
    assert point == pytest.approx(2.5 / 4) and 0 <= low <= point <= high <= 1
    custom = paired_bootstrap_ci(a, b, lambda x, y: float(np.mean(x) - np.mean(y)))
    assert custom == pytest.approx(paired_bootstrap_ci(a, b, "mean_diff"))
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap_ci([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="unknown paired statistic"):
        paired_bootstrap_ci(a, b, "median")


def test_rate_with_ci_handles_empty():
    assert rate_with_ci([]) == {"rate": None, "ci_low": None, "ci_high": None, "n": 0}
    assert rate_with_ci([True, True, False, True])["rate"] == 0.75


def test_two_sample_bootstrap_resamples_each_sample_on_its_own():
    sizes = []

    def mean_gap(a, b):
        sizes.append((a.size, b.size))
        return float(a.mean() - b.mean())

    rng = np.random.default_rng(3)
    a, b = rng.normal(1.0, 1.0, 400), rng.normal(0.0, 1.0, 100)
    point, low, high = two_sample_bootstrap_ci(a, b, mean_gap, n_resamples=500, seed=1)
    assert point == pytest.approx(a.mean() - b.mean())
    assert set(sizes) == {(400, 100)}  # neither sample shrinks, grows or vanishes in a resample
    # the normal-theory standard error of a difference of two independent means
    se = np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.2)
    assert low < point < high
    assert two_sample_bootstrap_ci(a, b, mean_gap, n_resamples=500, seed=1) == (point, low, high)
    assert two_sample_bootstrap_ci([2.0] * 5, [1.0] * 7, mean_gap, n_resamples=50) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="b: no values"):
        two_sample_bootstrap_ci([1.0], [], mean_gap)


def test_ratio_ci_resamples_items_not_their_parts():
    """Σ num / Σ den over resampled items: one item with many pairs moves every resample it is drawn in."""
    point, low, high = ratio_ci([3.0, 0.0], [4.0, 1.0], n_resamples=2000, seed=0)
    # resamples {a, a} 6 / 8, {a, b} 3 / 5, {b, b} 0 / 2, each pair of items drawn in either order
    assert point == pytest.approx(0.6) and low == 0.0 and high == pytest.approx(0.75)
    with pytest.raises(ValueError, match="positive denominator"):
        ratio_ci([1.0], [0.0])
    with pytest.raises(ValueError, match="same length"):
        ratio_ci([1.0, 2.0], [1.0])


def test_jackknife_ci_of_a_statistic_of_whole_items():
    """Distinct words over texts, left out one text at a time: 1.0, 0.5 and 0.625 (hand-computed)."""
    texts = ["a a a a", "b c d e", "f g"]
    distinct = lambda sample: len({w for t in sample for w in t.split()}) / sum(len(t.split()) for t in sample)  # noqa: E731
    point, low, high = jackknife_ci(texts, distinct)
    leave_out = np.array([1.0, 0.5, 0.625])
    se = np.sqrt(2 / 3 * ((leave_out - leave_out.mean()) ** 2).sum())
    assert point == pytest.approx(0.7) and (low, high) == pytest.approx((0.7 - 1.959964 * se, 0.7 + 1.959964 * se))
    # twenty texts without a shared word: a bootstrap draws texts twice and counts their words as repeated, so its
    # whole interval lies below the point; every leave-one-out keeps 1.0
    unique = [f"w{2 * i} w{2 * i + 1}" for i in range(20)]
    boot = bootstrap_ci(np.arange(20), lambda idx: distinct([unique[int(i)] for i in idx]), n_resamples=500, seed=0)
    assert boot[2] < 1.0 and jackknife_ci(unique, distinct) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="two items"):
        jackknife_ci(["a"], distinct)


def test_mean_ci_leaves_missing_values_out():
    m = mean_ci([1.0, None, float("nan"), 3.0], n_resamples=200, seed=0)
    assert m["mean"] == 2.0 and m["n"] == 2 and 1.0 <= m["ci_low"] < m["ci_high"] <= 3.0
    assert mean_ci([None]) == {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
