"""Means and 95% confidence intervals, without scipy.

The unit of sampling is the test item: we want to know whether a model would still score higher
on other items like these. So a model's K judgements of one item are first averaged into one item
score (the repeats are not independent samples of the item set: counting them as such would make
the interval too narrow by about sqrt(K)), and the interval is Student's t over the item scores:
mean +- t(0.975, n-1) * sd / sqrt(n). Differences between two models are paired by item, which
removes the items' own difficulty from the comparison and gives a much tighter interval than
comparing two separate intervals.
"""

from __future__ import annotations

import math
from statistics import NormalDist, fmean, stdev

# two-sided 95%: t quantile at 0.975 for 1..30 degrees of freedom (standard tables)
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)
_Z975 = NormalDist().inv_cdf(0.975)


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom."""
    if df < 1:
        raise ValueError("t needs at least one degree of freedom")
    if df <= len(_T975):
        return _T975[df - 1]
    # Cornish-Fisher expansion around the normal quantile: within 0.001 of the exact value
    # for df > 30 (2.021 at 40, 1.984 at 100)
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: list[float]) -> tuple[float | None, float | None, float | None]:
    """(mean, low, high) of a 95% t interval; no interval from fewer than two values."""
    if not values:
        return None, None, None
    m = fmean(values)
    if len(values) < 2:
        return m, None, None
    half = t975(len(values) - 1) * stdev(values) / math.sqrt(len(values))
    return m, m - half, m + half


def sample_std(values: list[float]) -> float | None:
    return stdev(values) if len(values) >= 2 else None


def mean_or_none(values: list[float]) -> float | None:
    return fmean(values) if values else None
