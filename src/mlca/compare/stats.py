"""Seed-to-seed statistics for the compare table: mean ± std, Welch's t-test with a confidence
interval and a minimum detectable difference, and Holm's correction over the whole table.

The paper's gains (about one mAP point) come from single runs. Here every attention is
trained with several seeds, and a difference to the baseline is called real only when
Welch's unequal-variance t-test, corrected for the number of tests in the table, says it is
unlikely under seed noise alone.

Rules (also printed in the table's footer, see :data:`TEST_RULE`):

* ``std`` is the sample standard deviation (``ddof=1``); with one value it is NaN, because
  one run says nothing about the spread.
* Welch's t-test is two-sided (``scipy.stats.ttest_ind(a, b, equal_var=False)``). It needs
  at least two values on each side; otherwise no test is possible and ``p`` is NaN.
  When both sides have zero spread the statistic is 0/0: also NaN.
* The 95 % confidence interval of Δ is Welch's: ``Δ ± t(0.975, df) · se`` with
  ``se² = s_a²/n_a + s_b²/n_b`` and the Welch–Satterthwaite ``df`` of the test, so it excludes
  0 exactly when the uncorrected ``p < 0.05``.
* One table runs one test per (attention, metric): with five attentions and two metrics, ten
  tests at 0.05 give a false "yes" somewhere about 40 % of the time. :func:`holm` adjusts the
  p-values of every test in the table together (Holm 1979, step-down, controls the family-wise
  error rate without assumptions on the dependence between tests); a difference "exceeds the
  seed-to-seed spread" when its Holm-adjusted ``p < alpha`` (default 0.05).
* The minimum detectable difference (MDE) is the smallest |Δ| that this run's Welch test
  (uncorrected alpha 0.05, two-sided) would detect with 80 % power, taking the observed ``se``
  and ``df`` as the true ones: the noncentral-t power ``P(|T| > t_crit)``,
  ``T ~ nct(df, |Δ|/se)`` (:func:`welch_power`), solved for |Δ|. A "no" with |Δ| well under the
  MDE says the run was too small to see a difference of that size: more seeds would help (the
  MDE shrinks about as 1/sqrt(seeds)); a "no" with |Δ| near or above it (possible after the
  Holm correction) says the table's multiplicity, not the seed count, held it back.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import optimize as _opt
from scipy import stats as _sps

__all__ = [
    "Summary", "Comparison", "summarize", "welch", "verdict", "holm", "welch_power",
    "min_detectable_diff", "TEST_RULE", "ALPHA", "POWER", "CONFIDENCE",
]

ALPHA = 0.05  # significance level of each test, family-wise after Holm's correction
POWER = 0.80  # power of the minimum detectable difference
CONFIDENCE = 0.95  # level of the confidence interval of Δ

TEST_RULE = (
    "Δ = mean(attention) - mean(baseline) over seeds, with its 95 % confidence interval "
    "(Welch-Satterthwaite t interval); p = two-sided Welch's t-test (unequal variances, "
    "scipy.stats.ttest_ind(equal_var=False)), Holm-adjusted over all {m} tests in this table "
    "({what}); the uncorrected p is in results.csv (p_map50, p_map). "
    "'yes' = the difference exceeds the seed-to-seed spread (Holm-adjusted p < {alpha}), "
    "'no' = it does not, 'n/a' = no test possible (fewer than 2 seeds on a side, or no spread at all). "
    "MDE = the smallest |Δ| this run would detect with 80 % power (two-sided Welch test at "
    "uncorrected alpha {alpha}, noncentral t with the observed seed spread and Welch df): "
    "a 'no' with |Δ| < MDE means more seeds could tell, the MDE shrinking about as 1/sqrt(seeds)."
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
    (uncorrected) and Welch–Satterthwaite degrees of freedom; ``se`` the standard error of
    ``diff``; ``ci_low``/``ci_high`` its 95 % confidence interval; ``mde`` the minimum
    detectable difference at 80 % power. All but ``diff`` are NaN when no test is possible
    (``reason`` says why).
    """

    diff: float
    t: float
    p: float
    df: float
    reason: str = ""
    se: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    mde: float = math.nan


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


def welch_power(delta: float, se: float, df: float, alpha: float = ALPHA) -> float:
    """Power of the two-sided Welch test at level ``alpha`` against a true difference ``delta``.

    With ``se`` and ``df`` taken as known, ``T = Δ̂/se`` follows a noncentral t with ``df``
    degrees of freedom and noncentrality ``delta/se``; the power is ``P(|T| > t(1 - alpha/2, df))``.
    """
    if not (se > 0 and df > 0):
        raise ValueError(f"welch_power: se and df must be > 0, got se={se}, df={df}")
    tc = _sps.t.ppf(1 - alpha / 2, df)
    nc = abs(delta) / se
    upper = float(_sps.nct.sf(tc, df, nc))
    # the far lower tail: scipy's nct.cdf returns NaN there for small df, so use the mirrored
    # upper tail, bounded by P(Z < -nc) (T < -tc < 0 needs Z + nc < 0)
    lower = float(_sps.nct.sf(tc, df, -nc))
    lower = min(lower, float(_sps.norm.cdf(-nc))) if math.isfinite(lower) else 0.0
    return upper + lower


def min_detectable_diff(se: float, df: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The |Δ| at which :func:`welch_power` equals ``power`` (noncentral t, solved by brentq)."""
    if not (se > 0 and df > 0):
        raise ValueError(f"min_detectable_diff: se and df must be > 0, got se={se}, df={df}")
    if not alpha < power < 1:
        raise ValueError(f"min_detectable_diff: need alpha < power < 1, got alpha={alpha}, power={power}")
    # power rises monotonically from alpha (at 0) towards 1; the normal approximation
    # (z(1 - alpha/2) + z(power)) * se is below the answer, so start the bracket from it
    hi = (_sps.norm.ppf(1 - alpha / 2) + _sps.norm.ppf(power)) * se
    while welch_power(hi, se, df, alpha) < power:
        hi *= 2
    return float(_opt.brentq(lambda d: welch_power(d, se, df, alpha) - power, 0.0, hi, xtol=1e-14 * se, rtol=1e-12))


def welch(a: Sequence[float], b: Sequence[float]) -> Comparison:
    """Welch's two-sided t-test of mean(a) == mean(b), its 95 % CI and MDE.

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
    df = float((vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1)))
    se = float(math.sqrt(vx + vy))
    half = float(_sps.t.ppf(1 - (1 - CONFIDENCE) / 2, df)) * se
    return Comparison(
        diff, float(res.statistic), float(res.pvalue), df,
        se=se, ci_low=diff - half, ci_high=diff + half, mde=min_detectable_diff(se, df),
    )


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order; NaN entries stay NaN and do
    not count as tests.

    With the m finite p-values sorted ascending, ``p_(1) <= ... <= p_(m)``:
    ``adj_(i) = min(1, max_{j <= i} (m - j + 1) p_(j))``. Rejecting where ``adj < alpha``
    is Holm's procedure at family-wise level alpha. Tied p-values get equal adjusted values.
    """
    p = np.asarray(list(pvalues), dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"holm: expected a flat sequence of p-values, got shape {p.shape}")
    finite = ~np.isnan(p)
    if ((p[finite] < 0) | (p[finite] > 1)).any():
        raise ValueError(f"holm: p-values must lie in [0, 1], got {p.tolist()}")
    out = np.full(p.shape, math.nan)
    idx = np.flatnonzero(finite)
    m = idx.size
    order = idx[np.argsort(p[idx], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out.tolist()


def verdict(p: float, alpha: float = ALPHA) -> str:
    """``'yes'`` if p < alpha, ``'no'`` if not, ``'n/a'`` if p is NaN (no test possible)."""
    if p is None or math.isnan(p):
        return "n/a"
    return "yes" if p < alpha else "no"
