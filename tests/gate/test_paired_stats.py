"""McNemar's test, Tango's paired interval and the power calculation against known values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from validation.accuracy import (
    EXACT_MCNEMAR_BELOW,
    _tango_z,
    mcnemar,
    pass_probability,
    rows_needed,
    tango_interval,
)

Z95 = float(stats.norm.ppf(0.975))

# Cavo et al. (2012), complete response before/after consolidation therapy: the worked example of
# Fagerland, Lydersen & Laake, Stat Med 33 (2014) 2850-2875 (n11=59, n12=6, n21=16, n22=80), whose
# published figures the R package contingencytables reproduces in tests/testthat/test-ch8.R.
CAVO_B, CAVO_C, CAVO_N = 6, 16, 161


def test_exact_mcnemar_is_the_two_sided_binomial_test_on_the_discordant_pairs() -> None:
    for b in range(EXACT_MCNEMAR_BELOW):
        for c in range(EXACT_MCNEMAR_BELOW - b):
            p, test = mcnemar(b, c)
            assert test == "exact"
            assert p == (stats.binomtest(b, b + c, 0.5).pvalue if b + c else 1.0)


def test_mcnemar_reproduces_the_published_cavo_p_value() -> None:
    p, test = mcnemar(CAVO_B, CAVO_C)
    assert test == "exact" and round(p, 6) == 0.052479


def test_asymptotic_mcnemar_from_25_discordant_pairs_matches_agresti() -> None:
    # Agresti, Categorical Data Analysis (2nd ed., 2002), section 10.1: prime minister approval,
    # b = 150, c = 86 of 1600; z = 4.17, z^2 = 17.36.
    p, test = mcnemar(150, 86)
    assert test == "asymptotic"
    statistic = float(stats.chi2.isf(p, 1))
    assert round(statistic, 2) == 17.36 and round(math.sqrt(statistic), 2) == 4.17
    assert mcnemar(13, 12)[1] == "asymptotic" and mcnemar(12, 12)[1] == "exact"


def test_tango_interval_reproduces_the_published_cavo_interval() -> None:
    low, high = tango_interval(CAVO_B, CAVO_C, CAVO_N, 0.95)
    assert (round(low, 4), round(high, 4)) == (-0.1240, -0.0054)


def test_tango_score_at_zero_is_mcnemars_z() -> None:
    for b, c in [(6, 16), (1, 0), (30, 12), (150, 86)]:
        assert float(_tango_z(0.0, b, c, 500)) == pytest.approx((b - c) / math.sqrt(b + c))


def test_no_discordant_pairs_bound_the_drop_at_z2_over_n_plus_z2() -> None:
    # With b = c = 0, T(d) = -sqrt(n d / (1 - d)), so the bound solves to z^2 / (n + z^2).
    for n in (60, 300, 5000):
        low, high = tango_interval(0, 0, n, 0.95)
        assert high == pytest.approx(Z95**2 / (n + Z95**2), abs=1e-9)
        assert low == pytest.approx(-high, abs=1e-9)


@pytest.mark.parametrize(("b", "c", "n"), [(1, 0, 1), (0, 1, 1), (5, 0, 5), (0, 5, 5), (3, 2, 5), (0, 0, 1)])
def test_interval_holds_the_estimate_at_the_edges(b: int, c: int, n: int) -> None:
    low, high = tango_interval(b, c, n, 0.95)
    assert -1.0 <= low <= (b - c) / n <= high <= 1.0
    assert (high == 1.0) == (b == n) and (low == -1.0) == (c == n)


def test_higher_confidence_widens_the_interval() -> None:
    narrow, wide = tango_interval(4, 1, 300, 0.90), tango_interval(4, 1, 300, 0.99)
    assert wide[0] < narrow[0] and narrow[1] < wide[1]


def test_the_power_criterion_is_the_gate_rule() -> None:
    # pass_probability counts "T(margin) < -z"; the gate asks "upper bound < margin": the same event.
    n, margin = 200, 0.03
    for b in range(0, 25, 3):
        for c in range(0, 25, 3):
            by_bound = tango_interval(b, c, n, 0.95)[1] < margin
            by_score = bool(_tango_z(margin, b, c, n) < -Z95)
            assert by_bound == by_score, (b, c)


def test_pass_probability_matches_a_simulation() -> None:
    n, discordance, margin = 300, 0.05, 0.05
    rng = np.random.default_rng(7)
    draws = rng.multinomial(n, [discordance / 2, discordance / 2, 1 - discordance], size=20000)
    simulated = float(np.mean(_tango_z(margin, draws[:, 0], draws[:, 1], n) < -Z95))
    assert pass_probability(n, discordance, margin, 0.95) == pytest.approx(simulated, abs=0.01)


def test_rows_needed_with_no_discordance_is_the_closed_form_floor() -> None:
    # b = c = 0 always: the gate passes once z^2 / (n + z^2) < margin, i.e. n > z^2 (1 - margin) / margin.
    for margin in (0.02, 0.05):
        assert rows_needed(0.0, margin, 0.95) == math.floor(Z95**2 * (1 - margin) / margin) + 1


def test_rows_needed_approaches_the_normal_approximation_for_many_discordant_pairs() -> None:
    # Non-inferiority with true drop 0: n = (z_{1-alpha/2} + z_{power})^2 * discordance / margin^2.
    discordance, margin = 0.10, 0.02
    normal = (Z95 + stats.norm.ppf(0.8)) ** 2 * discordance / margin**2
    needed = rows_needed(discordance, margin, 0.95)
    assert needed is not None and needed == pytest.approx(normal, rel=0.05)
    assert pass_probability(needed, discordance, margin, 0.95) >= 0.8


def test_rows_needed_grows_with_discordance_and_shrinking_margin() -> None:
    table = {(d, m): rows_needed(d, m, 0.95) for d in (0.01, 0.05) for m in (0.02, 0.05)}
    assert table[(0.01, 0.05)] < table[(0.01, 0.02)] < table[(0.05, 0.02)]  # type: ignore[operator]
    assert table[(0.01, 0.05)] < table[(0.05, 0.05)]  # type: ignore[operator]


def test_rows_needed_refuses_what_no_golden_set_can_show() -> None:
    assert rows_needed(0.1, 0.02, 0.95, true_drop=0.03) is None
    assert rows_needed(0.9, 0.001, 0.95, max_rows=1000) is None
    with pytest.raises(ValueError, match="discordance"):
        pass_probability(100, 0.01, 0.02, 0.95, true_drop=0.05)
