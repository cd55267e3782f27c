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
