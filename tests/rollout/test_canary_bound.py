"""The bound ``make canary-eval`` prints beside errors_5pt_rollback_p95_s: the least any rule could do."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.canary import report
from core.rollout_policy import RolloutPolicy


@pytest.mark.parametrize(("n", "p0"), [(30, 0.0), (59, 0.005), (171, 0.01), (600, 0.02)])
def test_the_test_rolls_back_an_identical_canary_exactly_alpha_of_the_time(n: int, p0: float) -> None:
    assert report.ump_power(n, p0, p0, 0.01) == pytest.approx(0.01, abs=1e-12)


def test_its_power_is_what_a_simulation_of_the_test_finds() -> None:
    from scipy.stats import binom

    n, p0, p1, alpha = 120, 0.01, 0.06, 0.01
    cut = next(k for k in range(n + 1) if binom.sf(k, n, p0) <= alpha)
    share = (alpha - binom.sf(cut, n, p0)) / binom.pmf(cut, n, p0)
    rng = np.random.default_rng(7)
    errors = rng.binomial(n, p1, 400_000)
    rejected = (errors > cut) | ((errors == cut) & (rng.random(errors.size) < share))
    assert report.ump_power(n, p0, p1, alpha) == pytest.approx(float(rejected.mean()), abs=0.003)


def test_from_a_champion_without_errors_one_error_is_enough_and_the_bound_is_the_closed_form() -> None:
    # P(no error) on n requests at 5% must fall to 5% after the test's 1% randomized share: (1 - a) 0.95^n <= 0.05.
    expected = math.ceil(math.log(0.05 / 0.99) / math.log(0.95))
    assert report.least_requests(0.0, 0.05, 0.01, 0.95) == expected == 59
    assert report.ump_power(expected - 1, 0.0, 0.05, 0.01) < 0.95 <= report.ump_power(expected, 0.0, 0.05, 0.01)


def test_a_noisier_champion_needs_more_canary_requests() -> None:
    counts = [report.least_requests(p0, 0.05, 0.01, 0.95) for p0 in (0.0, 0.005, 0.01, 0.02)]
    assert counts == sorted(counts) and len(set(counts)) == 4


def test_the_bound_scales_with_the_first_step_and_says_which_step_would_allow_30_s() -> None:
    five = report.five_points_bound(RolloutPolicy(), 20.0, (0.01,))
    wide = report.five_points_bound(RolloutPolicy(steps=[25, 50, 100]), 20.0, (0.01,))
    n = five["0.010"]["requests"]
    assert five["first_step_percent"] == 5 and five["0.010"]["seconds_at_first_step"] == n / 1.0
    assert wide["0.010"]["seconds_at_first_step"] == n / 5.0
    assert five["0.010"]["least_first_step_percent_for_30_s"] == pytest.approx(100 * n / 600)
    assert wide["0.010"]["least_first_step_percent_for_30_s"] == five["0.010"]["least_first_step_percent_for_30_s"]


def test_the_report_states_the_bound_it_computed() -> None:
    summary = {"errors_5pt_bound": report.five_points_bound(RolloutPolicy(), 20.0, (0.0, 0.01))}
    lines = report.table({"rows": [], "targets": {}, **summary}).splitlines()
    assert any("0.0% champion: no rule can beat 59 s at a 5% first step (59 canary requests)" in line for line in lines)
    n = summary["errors_5pt_bound"]["0.010"]["requests"]
    assert any(f"1.0% champion: no rule can beat {n} s" in line for line in lines)
