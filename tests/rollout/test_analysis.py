"""The canary verdict: noise passes, a real regression with enough traffic fails, floors abort at once."""

from __future__ import annotations

import random

import pytest

from serving.rollout.analysis import Decision, RolloutParams, judge
from serving.telemetry import LATENCY_BUCKETS, VersionStats
from serving.telemetry import quantile as percentile

PARAMS = RolloutParams(
    steps=[5, 25, 50, 100],
    interval_s=5,
    min_requests=20,
    alpha=0.01,
    max_error_rate_increase=0.05,
    max_p95_ratio=2.0,
    min_latency_effect=1.2,
    max_failed_checks=1,
    floor_min_requests=5,
)


def stats(latencies_s: list[float], errors: int = 0) -> VersionStats:
    """What a gateway's counters say after these successful requests and ``errors`` failures."""
    buckets = {le: float(sum(1 for x in latencies_s if x <= le)) for le in (*LATENCY_BUCKETS, float("inf"))}
    return VersionStats(requests=float(len(latencies_s) + errors), errors=float(errors), buckets=buckets)


def sample(rng: random.Random, n: int, median_s: float) -> list[float]:
    # Log-normal latencies, like a service's: a long right tail.
    return [median_s * rng.lognormvariate(0, 0.25) for _ in range(n)]


def test_percentiles_come_from_the_histogram() -> None:
    window = stats([0.012] * 50 + [0.045] * 50)

    assert 0.01 < percentile(window, 0.5) <= 0.015  # type: ignore[operator]
    assert 0.04 < percentile(window, 0.95) <= 0.05  # type: ignore[operator]
    assert percentile(VersionStats(), 0.5) is None


def test_too_little_traffic_waits() -> None:
    verdict = judge(stats([0.02] * 100), stats([0.02] * 10), PARAMS)

    assert verdict.decision is Decision.WAIT
    assert "rollout.min_requests is 20" in verdict.reasons[0]


def test_noise_between_equal_versions_rarely_fails() -> None:
    rng = random.Random(7)
    decisions = [
        judge(stats(sample(rng, 400, 0.03), errors=rng.randint(0, 4)), stats(sample(rng, 60, 0.03)), PARAMS).decision
        for _ in range(200)
    ]

    assert decisions.count(Decision.ABORT) == 0
    # One-sided tests at alpha 0.01 on equal versions: about 1% false alarms, allow sampling noise.
    assert decisions.count(Decision.FAIL) <= 6


def test_a_small_real_latency_regression_is_caught_with_enough_traffic() -> None:
    rng = random.Random(11)
    champion, slower = stats(sample(rng, 2000, 0.030)), stats(sample(rng, 400, 0.039))  # 1.3x, under the 2x floor

    verdict = judge(champion, slower, PARAMS)

    assert verdict.decision is Decision.FAIL
    assert verdict.figures["latency_p_value"] < PARAMS.alpha
    assert 1.2 <= verdict.figures["p50_ratio"] < 2.0
    assert "slower than the champion" in verdict.reasons[0]


def test_a_significant_but_trivial_latency_difference_passes() -> None:
    rng = random.Random(3)
    champion, slightly = stats(sample(rng, 5000, 0.030)), stats(sample(rng, 5000, 0.032))  # 1.07x

    verdict = judge(champion, slightly, PARAMS)

    assert verdict.figures["latency_p_value"] < PARAMS.alpha  # real, but too small to matter
    assert verdict.decision is Decision.HEALTHY


def test_a_small_error_regression_fails_on_fisher_not_the_floor() -> None:
    champion, canary = stats([0.02] * 1000, errors=0), stats([0.02] * 300, errors=12)  # 3.8%: under the 5% floor

    verdict = judge(champion, canary, PARAMS)

    assert verdict.decision is Decision.FAIL
    assert verdict.figures["errors_p_value"] < PARAMS.alpha
    assert "more errors than the champion" in verdict.reasons[0]


@pytest.mark.parametrize(
    ("canary", "floor"),
    [
        (stats([], errors=6), "rollout.max_error_rate_increase"),
        (stats([0.02] * 3, errors=3), "rollout.max_error_rate_increase"),
        (stats([0.2] * 30), "rollout.max_p95_ratio"),
    ],
    ids=["all-errors", "half-errors", "ten-times-slower"],
)
def test_a_floor_breach_aborts_at_once(canary: VersionStats, floor: str) -> None:
    verdict = judge(stats([0.02] * 200), canary, PARAMS)

    assert verdict.decision is Decision.ABORT
    assert floor in verdict.reasons[0]


def test_the_error_floor_needs_evidence() -> None:
    verdict = judge(stats([0.02] * 200), stats([], errors=2), PARAMS)

    assert verdict.decision is Decision.WAIT
