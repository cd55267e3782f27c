"""Statistics of the compare table, checked against numbers computed from the definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate

from mlca.compare.stats import summarize, verdict, welch


def _t_pdf(x: float, df: float) -> float:
    """Student's t density written from its definition (float64)."""
    logc = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(logc - (df + 1) / 2 * math.log1p(x * x / df))


def _welch_reference(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """t, df, two-sided p of Welch's test from the textbook formulas (loops, float64)."""
    na, nb = len(a), len(b)
    ma, mb = sum(a) / na, sum(b) / nb
    va = sum((x - ma) ** 2 for x in a) / (na - 1)
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1)
    se2 = va / na + vb / nb
    t = (ma - mb) / math.sqrt(se2)
    df = se2**2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    tail, _ = integrate.quad(_t_pdf, abs(t), math.inf, args=(df,), epsabs=1e-13, epsrel=1e-11)
    return t, df, 2 * tail


def test_welch_on_hand_computed_sample():
    # a: mean 2.5, var 5/3; b: mean 5, var 2.5 -> se^2 = 5/12 + 1/2 = 11/12
    a, b = [1.0, 2.0, 3.0, 4.0], [3.0, 4.0, 5.0, 6.0, 7.0]
    res = welch(a, b)
    assert res.diff == pytest.approx(-2.5, abs=1e-15)
    assert res.t == pytest.approx(-2.5 / math.sqrt(11 / 12), rel=1e-12)  # -2.611164839...
    assert res.df == pytest.approx((11 / 12) ** 2 / ((5 / 12) ** 2 / 3 + 0.25 / 4), rel=1e-12)  # 6.98077
    _, _, p_ref = _welch_reference(a, b)
    assert res.p == pytest.approx(p_ref, rel=1e-7)
    assert 0.03 < res.p < 0.04  # two-sided, df ~ 6.98, |t| ~ 2.61


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=2, max_size=6),
    st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=2, max_size=6),
)
def test_welch_matches_definition(a, b):
    if np.var(a) + np.var(b) < 1e-6:  # test undefined (0/0) or ill-conditioned
        return
    res = welch(a, b)
    t, df, p = _welch_reference(a, b)
    assert res.t == pytest.approx(t, rel=1e-9, abs=1e-12)
    assert res.df == pytest.approx(df, rel=1e-9)
    assert res.p == pytest.approx(p, rel=1e-6, abs=1e-10)
    assert res.diff == pytest.approx(np.mean(a) - np.mean(b), abs=1e-12)


def test_one_seed_means_no_test():
    res = welch([0.5], [0.4, 0.45])
    assert res.diff == pytest.approx(0.5 - 0.425)
    assert math.isnan(res.p) and math.isnan(res.t) and math.isnan(res.df)
    assert "fewer than 2" in res.reason
    assert verdict(res.p) == "n/a"


def test_no_spread_means_no_test():
    res = welch([0.3, 0.3], [0.2, 0.2])
    assert res.diff == pytest.approx(0.1)
    assert math.isnan(res.p)
    assert "spread" in res.reason


def test_summarize_uses_sample_std():
    s = summarize([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    assert s.mean == 5.0
    # sum of squared deviations = 32, n - 1 = 7
    assert s.std == pytest.approx(math.sqrt(32 / 7), rel=1e-15)
    assert s.n == 8


def test_summarize_one_and_none():
    one = summarize([0.42])
    assert one.mean == 0.42 and math.isnan(one.std) and one.n == 1
    empty = summarize([])
    assert math.isnan(empty.mean) and empty.n == 0


def test_verdict_rule():
    assert verdict(0.01) == "yes"
    assert verdict(0.05) == "no"  # strictly below alpha
    assert verdict(0.2) == "no"
    assert verdict(float("nan")) == "n/a"


def test_nan_input_is_an_error():
    with pytest.raises(ValueError, match="NaN"):
        summarize([0.1, float("nan")])


# ---------------------------------------------------------------- Holm's correction

from mlca.compare.stats import holm, min_detectable_diff, welch_power  # noqa: E402


@pytest.mark.parametrize(
    "p, expected",
    [
        # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04; running max -> 0.06
        ([0.01, 0.04, 0.03, 0.005], [0.03, 0.06, 0.06, 0.02]),
        # R: p.adjust(c(0.01, 0.02, 0.03, 0.04, 0.05), "holm")
        ([0.01, 0.02, 0.03, 0.04, 0.05], [0.05, 0.08, 0.09, 0.09, 0.09]),
        # ties: 0.02 x3 = 0.06, 0.02 x2 = 0.04 -> raised to 0.06 (monotonicity), 0.5 x1
        ([0.02, 0.02, 0.5], [0.06, 0.06, 0.5]),
        # capped at 1: 0.3 x3 = 0.9, 0.5 x2 = 1.0, 0.9 x1 -> 1.0
        ([0.3, 0.9, 0.5], [0.9, 1.0, 1.0]),
        ([0.4, 0.6], [0.8, 0.8]),
        ([0.7], [0.7]),  # one test: nothing to correct
        ([], []),
    ],
)
def test_holm_on_hand_worked_lists(p, expected):
    assert holm(p) == pytest.approx(expected, abs=1e-15)


def test_holm_leaves_missing_tests_out():
    # NaN = no test possible: it is not one of the m tests (m = 2 here)
    got = holm([float("nan"), 0.01, 0.04])
    assert math.isnan(got[0]) and got[1:] == pytest.approx([0.02, 0.04], abs=1e-15)


def test_holm_rejects_bad_p():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.1, 1.5])


def _holm_rejects(p: list[float], alpha: float) -> list[bool]:
    """Holm's procedure from its definition: step down through the sorted p-values and
    reject while p_(j) <= alpha / (m - j + 1)."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    rejected = [False] * m
    for j, i in enumerate(order):
        if p[i] > alpha / (m - j):
            break
        rejected[i] = True
    return rejected


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=12),
    st.floats(0.001, 0.3),
)
def test_holm_adjusted_p_is_the_smallest_rejecting_level(p, alpha):
    adj = holm(p)
    # adjusted p <= alpha exactly where Holm's procedure at level alpha rejects; float ties at
    # the boundary (alpha == k * p) are measure-zero and skipped
    m = len(p)
    if any(abs(alpha - k * v) < 1e-12 for v in p for k in range(1, m + 1)):
        return
    assert [a <= alpha for a in adj] == _holm_rejects(p, alpha)
    assert all(a >= v - 1e-15 for a, v in zip(adj, p)) and all(a <= 1.0 for a in adj)
    srt = sorted(range(m), key=lambda i: p[i])
    assert all(adj[srt[k]] <= adj[srt[k + 1]] for k in range(m - 1))  # monotone in p


# ---------------------------------------------------------------- confidence interval

def _t_cdf(x: float, df: float) -> float:
    upper, _ = integrate.quad(_t_pdf, abs(x), math.inf, args=(df,), epsabs=1e-14, epsrel=1e-12)
    return 1 - upper if x >= 0 else upper


def _t_quantile(q: float, df: float) -> float:
    from scipy.optimize import brentq

    return brentq(lambda x: _t_cdf(x, df) - q, 0.0, 100.0, xtol=1e-13)


def test_t_quantile_reference_matches_printed_tables():
    # Student's t table: t(0.975, 4) = 2.776445, t(0.975, 7) = 2.364624
    assert _t_quantile(0.975, 4) == pytest.approx(2.7764451052, abs=1e-9)
    assert _t_quantile(0.975, 7) == pytest.approx(2.3646242516, abs=1e-9)


def test_ci_on_hand_computed_sample_with_integer_df():
    # equal n = 3, both variances 1: se^2 = 1/3 + 1/3, Welch df = (2/3)^2 / (2 (1/3)^2 / 2) = 4
    res = welch([4.0, 5.0, 6.0], [1.0, 2.0, 3.0])
    assert res.df == pytest.approx(4.0, rel=1e-14)
    half = 2.7764451051977934 * math.sqrt(2 / 3)  # t(0.975, 4) * se
    assert res.se == pytest.approx(math.sqrt(2 / 3), rel=1e-14)
    assert (res.ci_low, res.ci_high) == pytest.approx((3.0 - half, 3.0 + half), rel=1e-10)
    assert (res.ci_low, res.ci_high) == pytest.approx((0.733042064, 5.266957936), abs=1e-9)


def test_ci_matches_r_t_test():
    # R: t.test(1:4, 3:7) -> df = 6.9808, 95 percent confidence interval: -4.7652203 -0.2347797
    res = welch([1.0, 2.0, 3.0, 4.0], [3.0, 4.0, 5.0, 6.0, 7.0])
    assert (res.ci_low, res.ci_high) == pytest.approx((-4.7652203, -0.2347797), abs=5e-8)
    half = _t_quantile(0.975, res.df) * math.sqrt(11 / 12)
    assert (res.ci_low, res.ci_high) == pytest.approx((-2.5 - half, -2.5 + half), rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=2, max_size=6),
    st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=2, max_size=6),
)
def test_ci_excludes_zero_exactly_when_p_below_005(a, b):
    if np.var(a) + np.var(b) < 1e-6:
        return
    res = welch(a, b)
    if abs(res.p - 0.05) < 1e-9:
        return
    assert res.ci_low <= res.diff <= res.ci_high
    assert (res.ci_low > 0 or res.ci_high < 0) == (res.p < 0.05)


# ---------------------------------------------------------------- minimum detectable difference

def _normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2))


def _power_by_integration(delta: float, se: float, df: float, alpha: float = 0.05) -> float:
    """P(|T| > t_crit) for T = (Z + delta/se) / sqrt(V/df), Z ~ N(0,1), V ~ chi2(df): the
    noncentral t written from its definition, integrated over V (float64)."""
    tc = _t_quantile(1 - alpha / 2, df)
    nc = delta / se
    logc = -(df / 2) * math.log(2) - math.lgamma(df / 2)

    def integrand(v: float) -> float:
        s = tc * math.sqrt(v / df)
        chi2 = math.exp(logc + (df / 2 - 1) * math.log(v) - v / 2) if v > 0 else 0.0
        return chi2 * (_normal_cdf(nc - s) + _normal_cdf(-s - nc))

    val, _ = integrate.quad(integrand, 0, math.inf, epsabs=1e-12, epsrel=1e-10, limit=200)
    return val


@pytest.mark.parametrize("se, df", [(0.01, 4.0), (0.012, 2.3), (0.004, 7.8), (1.0, 30.0), (0.5, 1.0)])
def test_mde_has_80_percent_power(se, df):
    d = min_detectable_diff(se, df)
    assert _power_by_integration(d, se, df) == pytest.approx(0.80, abs=1e-3)
    assert _power_by_integration(0.9 * d, se, df) < 0.78  # and it is the smallest such |Δ|
    assert welch_power(d, se, df) == pytest.approx(0.80, abs=1e-9)


def test_mde_approaches_the_normal_formula_for_many_degrees_of_freedom():
    # (z(0.975) + z(0.80)) * se = (1.959964 + 0.841621) * se = 2.801585 * se
    assert min_detectable_diff(1.0, 1e7) == pytest.approx(2.801585, abs=2e-5)
    assert min_detectable_diff(0.01, 4.0) > 0.02801585  # small df: wider than the normal one


def test_welch_reports_se_ci_and_mde_together():
    res = welch([0.51, 0.52, 0.50], [0.49, 0.50, 0.48])
    assert res.se == pytest.approx(math.sqrt(2 * 1e-4 / 3), rel=1e-9)
    assert res.mde == pytest.approx(min_detectable_diff(res.se, res.df), rel=1e-12)
    none = welch([0.5], [0.4, 0.45])
    assert math.isnan(none.ci_low) and math.isnan(none.mde)
