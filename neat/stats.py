"""Bootstrap confidence intervals for evaluation metrics, and paired comparisons of two methods.

Every interval here is a percentile bootstrap: resample the per-item values (per prompt, per pair)
with replacement ``n_resamples`` times, compute the statistic on each resample, and take the
``alpha/2`` and ``1 - alpha/2`` quantiles. Everything is deterministic given ``seed``
(``numpy.random.default_rng``), so a report regenerates bit-for-bit.

Comparing two methods on the same prompts uses a *paired* bootstrap (`paired_bootstrap_ci`): prompt
indices are resampled once and applied to both methods, so the prompt-to-prompt variation they share
cancels. A difference is called significant iff the ``1 - alpha`` interval of the difference
excludes 0 (`neat.evaluate.paired_diff`).

A statistic of two independent samples (an AUC of unsafe against safe prompts) uses a *two-sample*
bootstrap (`two_sample_bootstrap_ci`): each sample is resampled on its own, keeping both sizes.

Values must be finite; a NaN or infinite value raises ``ValueError`` (a bug upstream, not a score).
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import numpy as np

__all__ = [
    "bootstrap_ci",
    "jackknife_ci",
    "mean_ci",
    "ratio_ci",
    "paired_bootstrap_ci",
    "rate_with_ci",
    "two_sample_bootstrap_ci",
    "win_values",
]

Statistic = Callable[..., float]
PairedStatistic = Union[str, Callable[[np.ndarray, np.ndarray], float]]

# Resamples are drawn in chunks so that memory stays ~ _CHUNK_ELEMENTS floats whatever n is. The
# chunk size depends only on n, so results depend only on (values, n_resamples, seed).
_CHUNK_ELEMENTS = 2_000_000


def _as_values(values, what: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{what}: no values to bootstrap")
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{what}: value {i} is {arr[i]}; {int(bad.sum())} value(s) are NaN or infinite")
    return arr


def _check_params(n_resamples: int, alpha: float) -> None:
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    _check_alpha(alpha)


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _index_chunks(rng: np.random.Generator, n: int, n_resamples: int):
    per_chunk = max(1, _CHUNK_ELEMENTS // n)
    done = 0
    while done < n_resamples:
        size = min(per_chunk, n_resamples - done)
        yield rng.integers(0, n, size=(size, n))
        done += size


def _apply(statistic: Statistic, samples: np.ndarray) -> np.ndarray:
    """statistic over the last axis of [R, n] samples: vectorised if it takes `axis`, else a loop."""
    try:
        out = np.asarray(statistic(samples, axis=-1), dtype=np.float64)
        if out.shape == (samples.shape[0],):
            return out
    except TypeError:
        pass
    return np.array([float(statistic(row)) for row in samples], dtype=np.float64)


def _interval(stats: np.ndarray, alpha: float) -> tuple[float, float]:
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_ci(
    values: Sequence[float],
    statistic: Statistic = np.mean,
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Percentile-bootstrap ``(point, low, high)`` of ``statistic`` over ``values``.

    ``point`` is ``statistic(values)``; ``[low, high]`` is the ``1 - alpha`` percentile interval.
    ``statistic`` may accept ``axis=`` (numpy reductions do) for a vectorised bootstrap; any other
    callable ``f(1-d array) -> float`` works too, one resample at a time.
    """
    _check_params(n_resamples, alpha)
    arr = _as_values(values)
    point = float(statistic(arr))
    rng = np.random.default_rng(seed)
    stats = np.concatenate([_apply(statistic, arr[idx]) for idx in _index_chunks(rng, arr.size, int(n_resamples))])
    low, high = _interval(stats, alpha)
    return point, low, high


def ratio_ci(numerators: Sequence[float], denominators: Sequence[float], n_resamples: int = 1000,
             alpha: float = 0.05, seed: int = 0) -> tuple[float, float, float]:
    """``(point, low, high)`` of ``Σ numerators / Σ denominators``, resampling items (e.g. prompts, whose
    several pairs are not independent of each other). Denominators must be positive."""
    num, den = _as_values(numerators, "numerators"), _as_values(denominators, "denominators")
    if num.shape != den.shape:
        raise ValueError(f"numerators and denominators must have the same length, got {num.size} and {den.size}")
    if (den <= 0).any():
        raise ValueError("denominators: every item needs a positive denominator")

    def ratio(idx, axis=-1):
        i = np.asarray(idx, dtype=np.int64)
        return num[i].sum(axis=axis) / den[i].sum(axis=axis)

    return bootstrap_ci(np.arange(num.size), ratio, n_resamples=n_resamples, alpha=alpha, seed=seed)


def jackknife_ci(items: Sequence, statistic: Callable[[list], float], alpha: float = 0.05) -> tuple[float, float, float]:
    """``(point, low, high)`` of ``statistic(list of items)``: the point ± a normal quantile × the delete-one
    jackknife standard error. For statistics of whole items that a bootstrap biases: distinct n-grams pooled over
    texts fall in every resample that draws a text twice (its n-grams count twice, as distinct once)."""
    from statistics import NormalDist

    items = list(items)
    if len(items) < 2:
        raise ValueError("jackknife: at least two items are needed")
    _check_alpha(alpha)
    point = float(statistic(items))
    leave_out = np.array([float(statistic(items[:i] + items[i + 1:])) for i in range(len(items))])
    n = len(items)
    se = float(np.sqrt((n - 1) / n * ((leave_out - leave_out.mean()) ** 2).sum()))
    z = NormalDist().inv_cdf(1 - alpha / 2)
    return point, point - z * se, point + z * se


def two_sample_bootstrap_ci(
    a: Sequence[float],
    b: Sequence[float],
    statistic: Callable[[np.ndarray, np.ndarray], float],
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Percentile-bootstrap ``(point, low, high)`` of ``statistic(a, b)`` for two independent samples.

    Each resample draws ``len(a)`` items of ``a`` and ``len(b)`` of ``b`` with replacement, each sample
    on its own (stratified by sample), so neither can vanish from a resample.
    """
    _check_params(n_resamples, alpha)
    x, y = _as_values(a, "a"), _as_values(b, "b")
    point = float(statistic(x, y))
    rng = np.random.default_rng(seed)
    stats = np.array([float(statistic(x[rng.integers(0, x.size, x.size)], y[rng.integers(0, y.size, y.size)]))
                      for _ in range(int(n_resamples))], dtype=np.float64)
    low, high = _interval(stats, alpha)
    return point, low, high


def win_values(a: Sequence[float], b: Sequence[float], tie_tolerance: float = 0.0) -> np.ndarray:
    """Per-item outcome of ``a`` against ``b``: 1 win, 0.5 tie (``|a - b| <= tie_tolerance``), 0 loss."""
    x, y = _as_values(a, "a"), _as_values(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired values must have the same length, got {x.size} and {y.size}")
    diff = x - y
    tie = np.abs(diff) <= tie_tolerance
    return np.where(tie, 0.5, (diff > 0).astype(np.float64))


def _paired_statistic(statistic: PairedStatistic) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A function of [R, n] resamples of a and b returning [R] statistics."""
    if statistic == "mean_diff":
        return lambda a, b: (a - b).mean(axis=-1)
    if statistic == "win_rate":
        return lambda a, b: np.where(a == b, 0.5, (a > b).astype(np.float64)).mean(axis=-1)
    if callable(statistic):
        return lambda a, b: np.array([float(statistic(x, y)) for x, y in zip(a, b)], dtype=np.float64)
    raise ValueError(f"unknown paired statistic {statistic!r}; use 'mean_diff', 'win_rate' or a callable")


def paired_bootstrap_ci(
    a: Sequence[float],
    b: Sequence[float],
    statistic: PairedStatistic = "mean_diff",
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Paired percentile bootstrap ``(point, low, high)`` over items scored by two methods.

    ``a[i]`` and ``b[i]`` belong to the same item (prompt). One resample of item indices is applied
    to both. ``statistic``: ``"mean_diff"`` (mean of ``a - b``), ``"win_rate"`` (share of items where
    ``a > b``, ties counting one half) or a callable ``f(a_1d, b_1d) -> float``.
    """
    _check_params(n_resamples, alpha)
    x, y = _as_values(a, "a"), _as_values(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired values must have the same length, got {x.size} and {y.size}")
    stat = _paired_statistic(statistic)
    point = float(stat(x[None, :], y[None, :])[0])
    rng = np.random.default_rng(seed)
    stats = np.concatenate([stat(x[idx], y[idx]) for idx in _index_chunks(rng, x.size, int(n_resamples))])
    low, high = _interval(stats, alpha)
    return point, low, high


def mean_ci(values: Sequence, n_resamples: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict:
    """``{"mean", "ci_low", "ci_high", "n"}`` of the finite values (None and NaN left out: a missing score is
    not a zero), percentile bootstrap over them; ``mean`` and the bounds None when there is none."""
    kept = [float(v) for v in values if v is not None and np.isfinite(float(v))]
    if not kept:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    point, low, high = bootstrap_ci(kept, n_resamples=n_resamples, alpha=alpha, seed=seed)
    return {"mean": point, "ci_low": low, "ci_high": high, "n": len(kept)}


def rate_with_ci(flags: Sequence, n_resamples: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict:
    """Share of true flags with its bootstrap interval: ``{"rate", "ci_low", "ci_high", "n"}``.

    An empty sequence gives ``rate``/``ci_low``/``ci_high`` = None and ``n`` = 0 (nothing to measure).
    """
    arr = np.asarray(list(flags), dtype=np.float64).reshape(-1)
    if arr.size == 0:
        return {"rate": None, "ci_low": None, "ci_high": None, "n": 0}
    point, low, high = bootstrap_ci(arr, n_resamples=n_resamples, alpha=alpha, seed=seed)
    return {"rate": point, "ci_low": low, "ci_high": high, "n": int(arr.size)}
