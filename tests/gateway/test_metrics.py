"""The metrics contract as exported, and the status page's window over the same counters."""

from __future__ import annotations

import pytest

from serving.gateway.metrics import Metrics, Window, summarize
from serving.telemetry import LATENCY_BUCKETS, OUTCOME_REJECTED, VersionStats, parse_version_stats, quantile


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_exposition_parses_with_the_controllers_parser() -> None:
    metrics = Metrics()
    for latency in (0.012, 0.018, 0.09):
        metrics.attempt(1, "ok", latency)
    metrics.attempt(2, "ok", 0.2)
    metrics.attempt(2, "error")
    metrics.attempt(2, OUTCOME_REJECTED)
    metrics.shadow(3, ok=True, agreed=True)
    metrics.retry()
    metrics.request("/v1/chat/completions", 200)

    stats = parse_version_stats(metrics.exposition().decode())
    assert (stats[1].requests, stats[1].errors) == (3, 0)
    assert (stats[2].requests, stats[2].errors) == (3, 1)  # rejected counts as a request, not an error
    assert stats[1].buckets[0.015] == 1 and stats[1].buckets[0.02] == 2 and stats[1].buckets[float("inf")] == 3
    assert set(stats[1].buckets) == {*LATENCY_BUCKETS, float("inf")}
    # The shadow series carry a version label but no upstream requests: the controller sees nothing there.
    assert stats[3].requests == 0
    text = metrics.exposition().decode()
    for line in (
        'gateway_requests_total{code="200",route="/v1/chat/completions"} 1.0',
        "gateway_retries_total 1.0",
        'gateway_shadow_requests_total{outcome="ok",version="3"} 1.0',
        'gateway_shadow_agreement_total{version="3"} 1.0',
    ):
        assert line in text


def test_quantile_interpolates_within_the_bucket() -> None:
    stats = VersionStats(4, 0, {0.01: 0, 0.02: 2, 0.05: 4, float("inf"): 4})
    assert quantile(stats, 0.5) == pytest.approx(0.02)
    assert quantile(stats, 0.25) == pytest.approx(0.015)
    assert quantile(stats, 0.75) == pytest.approx(0.035)
    assert quantile(VersionStats(), 0.5) is None
    over = VersionStats(1, 0, {0.01: 0, float("inf"): 1})
    assert quantile(over, 0.95) == 0.01  # beyond the last bucket: its bound, as Prometheus does


def test_summary_has_rates_in_milliseconds() -> None:
    figures = summarize(VersionStats(10, 1, {0.01: 9, float("inf"): 9}))
    assert (figures.requests, figures.errors, figures.error_rate) == (10, 1, 0.1)
    assert figures.p50_ms == pytest.approx(5.0)


def test_the_window_counts_only_what_happened_inside_it() -> None:
    metrics, clock = Metrics(), Clock()
    window = Window(metrics, 60.0, clock=clock)
    metrics.attempt(1, "ok", 0.01)
    clock.now += 30
    window.snapshot()
    metrics.attempt(1, "error")
    metrics.attempt(1, "ok", 0.01)
    windowed, totals, span = window.figures()
    assert windowed[1].requests == 3 and span == 30  # the window reaches back to the start
    clock.now += 40  # the snapshot at 0 s left the window: the one at 30 s starts it
    window.snapshot()
    windowed, totals, span = window.figures()
    assert (windowed[1].requests, windowed[1].errors) == (2, 1)
    assert (totals[1].requests, totals[1].errors) == (3, 1)
    assert span == 40
    clock.now += 61
    window.snapshot()
    windowed, totals, _ = window.figures()
    assert windowed[1].requests == 0 and totals[1].requests == 3


def test_two_apps_in_one_process_do_not_share_counters() -> None:
    first, second = Metrics(), Metrics()
    first.attempt(1, "ok", 0.01)
    assert 1 not in second.version_stats()
