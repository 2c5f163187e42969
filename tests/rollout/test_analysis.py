"""The verdict's statistics and tick logic: valid at every look, sharp on real regressions, honest on ties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import betaln

from core.rollout_policy import RolloutPolicy
from serving.rollout.analysis import Evidence, Probes, Side, assess, harm_reason
from serving.rollout.machine import Action, Machine
from serving.rollout.stats import (
    bernoulli_bounds,
    conditional_log_ratios,
    discordance_evalue,
    mixture_evalue,
)
from serving.telemetry import LATENCY_BUCKETS, N_BUCKETS

POLICY = RolloutPolicy(probe_rps=0)


def _reference(k: float, n: float, alpha: float) -> tuple[float, float]:
    level = betaln(0.5 + k, 0.5 + n - k) - betaln(0.5, 0.5) + math.log(alpha)

    def f(p: float) -> float:
        return k * math.log(p) + (n - k) * math.log1p(-p) - level

    p_hat = min(max(k / n, 1e-14), 1 - 1e-14)
    low = 0.0 if k == 0 or f(1e-15) > 0 else brentq(f, 1e-15, p_hat, xtol=1e-16)
    high = 1.0 if k == n or f(1 - 1e-15) > 0 else brentq(f, p_hat, 1 - 1e-15, xtol=1e-16)
    return low, high


@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_bounds_solve_the_mixture_equation_exactly(alpha: float) -> None:
    rng = np.random.default_rng(1)
    n = np.concatenate([rng.integers(1, 40, 50), rng.integers(40, 5000, 50), rng.integers(5000, 10**6, 50)])
    p = rng.choice([0, 1e-4, 0.003, 0.02, 0.3, 0.5, 0.97, 1.0], len(n))
    k = np.minimum(rng.binomial(n, p) + rng.choice([0.0, 0.4], len(n)), n).astype(float)
    low, high = bernoulli_bounds(k, n.astype(float), alpha)
    for i in range(len(n)):
        ref_low, ref_high = _reference(float(k[i]), float(n[i]), alpha)
        assert low[i] == pytest.approx(ref_low, rel=1e-6, abs=1e-9)
        assert high[i] == pytest.approx(ref_high, rel=1e-6, abs=1e-9)
        assert low[i] <= k[i] / n[i] <= high[i]


def test_bounds_hold_at_every_look_with_the_promised_probability() -> None:
    # 4000 streams of 2000 Bernoulli(2%) draws, looked at after every draw: the share of streams whose
    # true rate ever leaves the bounds must stay under alpha (a fixed-n interval looked at this often
    # would be left by most of them).
    alpha, p, rows, looks = 0.05, 0.02, 4000, 2000
    rng = np.random.default_rng(7)
    k = np.zeros(rows)
    ever = np.zeros(rows, dtype=bool)
    for n in range(1, looks + 1):
        k += rng.random(rows) < p
        low, high = bernoulli_bounds(k, np.full(rows, float(n)), alpha)
        ever |= (p < low) | (p > high)
    assert ever.mean() <= alpha, f"{ever.mean():.3f} of the streams left the bounds"
    assert ever.mean() > 0  # the bounds are not vacuous


def test_the_conditional_test_holds_its_level_and_finds_a_real_increase() -> None:
    rng = np.random.default_rng(3)
    rows, ticks, alpha = 3000, 600, 0.01
    for canary_rate, expect_rejections in ((0.01, False), (0.05, True)):
        total = np.zeros((rows, 8))
        crossed = np.zeros(rows, dtype=bool)
        for _ in range(ticks):
            n_canary = rng.poisson(5, rows).astype(float)
            n_champion = rng.poisson(15, rows).astype(float)
            total += conditional_log_ratios(
                rng.binomial(n_canary.astype(int), canary_rate).astype(float),
                n_canary,
                rng.binomial(n_champion.astype(int), 0.01).astype(float),
                n_champion,
            )
            crossed |= mixture_evalue(total) >= 1 / alpha
        if expect_rejections:
            assert crossed.mean() > 0.99
        else:
            assert crossed.mean() <= alpha, f"{crossed.mean():.4f} of identical canaries rejected"


def test_discordance_evidence() -> None:
    assert discordance_evalue([0], [0])[0] == pytest.approx(1.0)  # identical answers say nothing
    # Every discordant pair against the canary: 2^(w+1)/(w+1) * (1 - 2^-(w+1)).
    assert discordance_evalue([9], [0])[0] == pytest.approx(2**10 / 10 * (1 - 2**-10))
    assert discordance_evalue([5], [5])[0] < 1.0  # balanced disagreement is no evidence of harm


def _side(rows: int, requests: float, errors: float, latencies_s: np.ndarray) -> Side:
    side = Side.empty(rows)
    side.requests[:], side.errors[:] = requests, errors
    counts = np.bincount(np.searchsorted(LATENCY_BUCKETS, latencies_s), minlength=N_BUCKETS).astype(float)
    for name in side.histograms:
        side.histograms[name][:] = counts
    return side


def _evidence(canary_latencies: np.ndarray, champion_latencies: np.ndarray, canary_errors: float = 0) -> Evidence:
    canary = _side(1, len(canary_latencies) + canary_errors, canary_errors, canary_latencies)
    champion = _side(1, len(champion_latencies), 0, champion_latencies)
    return Evidence(canary, champion, Probes.empty(1))


def test_a_thirty_percent_slower_canary_is_harmful_and_an_identical_one_healthy() -> None:
    rng = np.random.default_rng(5)
    champion = rng.lognormal(np.log(0.5), 0.35, 20_000)
    same = assess(_evidence(rng.lognormal(np.log(0.5), 0.35, 3000), champion), POLICY, np.array([100.0]))
    assert not same.any_harm()[0]
    assert all(same.healthy[m][0] for m in ("errors", "latency_p50", "latency_p95"))
    slower = assess(_evidence(1.3 * rng.lognormal(np.log(0.5), 0.35, 3000), champion), POLICY, np.array([100.0]))
    assert slower.harm["latency_p50"][0] and slower.harm["latency_p95"][0]
    assert not slower.healthy["latency_p50"][0]
    figures = slower.row_figures(0)
    assert figures["latency_p50_ratio"] == pytest.approx(1.3, rel=0.05)
    assert f"x{figures['latency_p50_ratio']:.2f} the champion's" in harm_reason("latency_p50", figures, POLICY)


def test_a_tail_only_regression_is_harm_at_p95_not_at_p50() -> None:
    rng = np.random.default_rng(6)
    champion = rng.lognormal(np.log(0.5), 0.35, 20_000)
    canary = rng.lognormal(np.log(0.5), 0.35, 4000)
    canary[rng.random(len(canary)) < 0.1] *= 3
    verdict = assess(_evidence(canary, champion), POLICY, np.array([100.0]))
    assert verdict.harm["latency_p95"][0] and not verdict.harm["latency_p50"][0]


def test_few_requests_are_neither_harm_nor_health() -> None:
    # One error in six canary requests (the old raw-rate floor rolled this back) proves nothing either way.
    rng = np.random.default_rng(8)
    verdict = assess(
        _evidence(rng.lognormal(-3, 0.3, 5), rng.lognormal(-3, 0.3, 400), canary_errors=1), POLICY, np.array([5.0])
    )
    assert not verdict.any_harm()[0]
    assert not verdict.healthy["errors"][0]


def test_the_machine_starts_steps_only_after_its_dwell_and_rolls_back_on_harm() -> None:
    policy = RolloutPolicy(probe_rps=0, min_step_s=30, min_step_requests=20, warmup_s=0)
    rng = np.random.default_rng(9)
    machine = Machine(policy, 1)
    empty = Evidence(Side.empty(1), Side.empty(1), Probes.empty(1))
    assert machine.tick(0.0, empty)[0][0] == Action.START
    machine.sync(0.0, np.array([5.0]), np.array([0.0]))
    healthy = _evidence(rng.lognormal(-3, 0.3, 400), rng.lognormal(-3, 0.3, 8000))
    assert machine.tick(10.0, healthy)[0][0] == Action.WAIT  # shown healthy, but only 10 s at this step
    assert machine.tick(31.0, healthy)[0][0] == Action.STEP
    failing = _evidence(rng.lognormal(-3, 0.3, 300), rng.lognormal(-3, 0.3, 8000), canary_errors=100)
    action, assessment = machine.tick(32.0, failing)
    assert action[0] == Action.ROLLBACK and assessment.harm["errors"][0]


def test_promotion_needs_the_final_margins_and_the_tails() -> None:
    policy = RolloutPolicy(probe_rps=0, min_step_s=0, min_step_requests=1, warmup_s=0)
    rng = np.random.default_rng(10)
    machine = Machine(policy, 1)
    machine.sync(0.0, np.array([100.0]), np.array([0.0]))
    # 20% slower at p95 only: within x1.5 at p95, but with 60 requests nothing is shown yet.
    few = _evidence(rng.lognormal(-3, 0.3, 60), rng.lognormal(-3, 0.3, 8000))
    action, assessment = machine.tick(1.0, few)
    assert action[0] == Action.WAIT and not assessment.healthy["latency_p95"][0]
    plenty = _evidence(rng.lognormal(-3, 0.3, 6000), rng.lognormal(-3, 0.3, 8000))
    assert machine.tick(2.0, plenty)[0][0] == Action.PROMOTE
