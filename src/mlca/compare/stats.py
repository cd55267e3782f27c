"""Seed-to-seed statistics for the compare table: mean ± std and Welch's t-test.

The paper's gains (about one mAP point) come from single runs. Here every attention is
trained with several seeds, and a difference to the baseline is called real only when
Welch's unequal-variance t-test says it is unlikely under seed noise alone.

Rules (also printed in the table's footer, see :data:`TEST_RULE`):

* ``std`` is the sample standard deviation (``ddof=1``); with one value it is NaN, because
  one run says nothing about the spread.
* Welch's t-test is two-sided (``scipy.stats.ttest_ind(a, b, equal_var=False)``). It needs
  at least two values on each side; otherwise no test is possible and ``p`` is NaN.
  When both sides have zero spread the statistic is 0/0: also NaN.
* A difference "exceeds the seed-to-seed spread" when ``p < alpha`` (default 0.05).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as _sps

__all__ = ["Summary", "Comparison", "summarize", "welch", "verdict", "TEST_RULE"]

ALPHA = 0.05

TEST_RULE = (
    "Δ = mean(attention) - mean(baseline) over seeds; p = two-sided Welch's t-test "
    "(unequal variances, scipy.stats.ttest_ind(equal_var=False)); "
    "'yes' = the difference exceeds the seed-to-seed spread (p < {alpha}), "
    "'no' = it does not, 'n/a' = no test possible (fewer than 2 seeds on a side, or no spread at all)."
)


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (ddof=1) of ``n`` values; ``std`` is NaN for n < 2."""

    mean: float
    std: float
    n: int


@dataclass(frozen=True)
class Comparison:
    """One attention against the baseline on one metric.

    ``diff`` is mean(a) - mean(b); ``t``/``p``/``df`` are Welch's statistic, two-sided p-value
    and Welch–Satterthwaite degrees of freedom, NaN when no test is possible (``reason`` says why).
    """

    diff: float
    t: float
    p: float
    df: float
    reason: str = ""


def _as_array(values: Sequence[float], what: str) -> np.ndarray:
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{what}: expected a flat sequence of numbers, got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError(f"{what}: contains NaN: {arr.tolist()}")
    return arr


def summarize(values: Sequence[float]) -> Summary:
    """Mean and sample std (ddof=1) of ``values``; empty input gives NaN mean and n=0."""
    arr = _as_array(values, "summarize")
    n = int(arr.size)
    mean = float(arr.mean()) if n else math.nan
    std = float(arr.std(ddof=1)) if n >= 2 else math.nan
    return Summary(mean=mean, std=std, n=n)


def welch(a: Sequence[float], b: Sequence[float]) -> Comparison:
    """Welch's two-sided t-test of mean(a) == mean(b).

    Returns the difference of means always (NaN only when a side is empty), and the test
    only when it is defined: at least two values on each side and some spread on one side.
    """
    x = _as_array(a, "welch(a)")
    y = _as_array(b, "welch(b)")
    if x.size == 0 or y.size == 0:
        return Comparison(math.nan, math.nan, math.nan, math.nan, "empty sample")
    diff = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return Comparison(diff, math.nan, math.nan, math.nan, "fewer than 2 seeds on a side")
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    if vx + vy == 0.0:
        return Comparison(diff, math.nan, math.nan, math.nan, "no seed-to-seed spread")
    with warnings.catch_warnings():
        # scipy warns of "catastrophic cancellation" when one side's values are all equal
        # (zero variance there), a normal case for mAP rounded to a few digits.
        warnings.simplefilter("ignore", RuntimeWarning)
        res = _sps.ttest_ind(x, y, equal_var=False)
    # Welch–Satterthwaite degrees of freedom, reported so readers can judge the test's power.
    df = (vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1))
    return Comparison(diff, float(res.statistic), float(res.pvalue), float(df))


def verdict(p: float, alpha: float = ALPHA) -> str:
    """``'yes'`` if p < alpha, ``'no'`` if not, ``'n/a'`` if p is NaN (no test possible)."""
    if p is None or math.isnan(p):
        return "n/a"
    return "yes" if p < alpha else "no"
