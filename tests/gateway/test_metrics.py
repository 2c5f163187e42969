"""The metrics contract as exported, and the status page's window over the same counters."""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np
import pytest

from serving.gateway.metrics import Metrics, Window, summarize
from serving.telemetry import (
    LATENCY_BUCKETS,
    N_BUCKETS,
    OUTCOME_REJECTED,
    VersionStats,
    parse_version_stats,
    quantile,
)


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
    # Each latency lands in the one bucket whose bounds hold it.
    for latency in (0.012, 0.018, 0.09):
        index = bisect.bisect_left(LATENCY_BUCKETS, latency)
        assert stats[1].latency[index] >= 1 and LATENCY_BUCKETS[index - 1] < latency <= LATENCY_BUCKETS[index]
    assert stats[1].latency.sum() == 3 and stats[2].latency.sum() == 1
    # The shadow series carry a version label but no upstream requests: the controller sees nothing there.
    assert stats.get(3, VersionStats()).requests == 0
    text = metrics.exposition().decode()
    for line in (
        'gateway_requests_total{code="200",route="/v1/chat/completions"} 1.0',
        "gateway_retries_total 1.0",
        'gateway_shadow_requests_total{outcome="ok",version="3"} 1.0',
        'gateway_shadow_agreement_total{version="3"} 1.0',
    ):
        assert line in text


def test_buckets_are_log_spaced_and_at_most_ten_percent_wide() -> None:
    growth = np.array(LATENCY_BUCKETS[1:]) / np.array(LATENCY_BUCKETS[:-1])
    assert growth.min() > 1.05 and growth.max() <= 1.10
    assert LATENCY_BUCKETS[0] <= 0.001 and LATENCY_BUCKETS[-1] >= 120


def test_quantiles_of_a_lognormal_sample_are_within_a_bucket() -> None:
    rng = np.random.default_rng(7)
    sample = rng.lognormal(np.log(0.5), 0.4, 20_000)
    metrics = Metrics()
    for latency in sample:
        metrics.attempt(1, "ok", float(latency))
    counts = metrics.version_stats()[1].latency
    for q in (0.05, 0.5, 0.95, 0.99):
        assert quantile(counts, q) == pytest.approx(float(np.quantile(sample, q)), rel=0.05)
    assert quantile(np.zeros_like(counts), 0.5) is None
    beyond = np.zeros_like(counts)
    beyond[-1] = 1
    assert quantile(beyond, 0.95) == LATENCY_BUCKETS[-1]  # beyond the last bucket: its bound, as Prometheus does


def test_pinned_attempts_are_counted_apart_and_never_in_the_judged_series() -> None:
    metrics = Metrics()
    metrics.attempt(1, "ok", 0.02, pinned=True)
    metrics.attempt(1, "error", pinned=True)
    metrics.attempt(1, "ok", 0.03)
    stats = metrics.version_stats()[1]
    assert (stats.requests, stats.errors, stats.latency.sum()) == (1, 0, 1)
    text = metrics.exposition().decode()
    assert 'gateway_unjudged_requests_total{kind="pinned",outcome="ok",version="1"} 1.0' in text
    assert 'gateway_unjudged_requests_total{kind="pinned",outcome="error",version="1"} 1.0' in text


def test_time_to_first_token_and_per_token_are_histograms_of_their_own() -> None:
    metrics = Metrics()
    metrics.attempt(1, "ok", 0.5, ttft_s=0.1, tpot_s=0.02)
    metrics.attempt(1, "ok", 0.4)  # measured without a stream: no token timings
    stats = metrics.version_stats()[1]
    assert (stats.latency.sum(), stats.histograms["ttft"].sum(), stats.histograms["tpot"].sum()) == (2, 1, 1)
    assert quantile(stats.histograms["ttft"], 0.5) == pytest.approx(0.1, rel=0.1)


def test_summary_has_rates_in_milliseconds() -> None:
    counts = np.zeros(N_BUCKETS)
    counts[bisect.bisect_left(LATENCY_BUCKETS, 0.005)] = 9
    figures = summarize(
        VersionStats(10, 1, {"latency": counts, "ttft": np.zeros(N_BUCKETS), "tpot": np.zeros(N_BUCKETS)})
    )
    assert (figures.requests, figures.errors, figures.error_rate) == (10, 1, 0.1)
    assert figures.p50_ms == pytest.approx(5.0, rel=0.1)


def test_summary_has_time_to_first_token_and_per_token_for_the_status_page() -> None:
    metrics = Metrics()
    for ttft in (0.05, 0.1, 0.2):
        metrics.attempt(1, "ok", 0.5, ttft_s=ttft, tpot_s=0.01, completion_tokens=8)

    figures = summarize(metrics.version_stats()[1])

    assert figures.ttft_p50_ms == pytest.approx(100.0, rel=0.1)
    assert figures.ttft_p95_ms is not None and figures.ttft_p95_ms > figures.ttft_p50_ms
    assert figures.tpot_p50_ms == pytest.approx(10.0, rel=0.1)
    text = metrics.exposition().decode()
    assert 'gateway_completion_tokens_bucket{le="8.0",version="1"} 3.0' in text
    assert 'gateway_completion_tokens_bucket{le="4.0",version="1"} 0.0' in text


def test_disconnects_and_cancellations_are_counted_apart_from_outcomes() -> None:
    metrics = Metrics()
    metrics.disconnect(2)
    metrics.cancelled(2, "disconnect")
    metrics.cancelled(2, "timeout")
    metrics.attempt(2, "error")

    text = metrics.exposition().decode()
    assert 'gateway_client_disconnects_total{version="2"} 1.0' in text
    assert 'gateway_upstream_cancellations_total{reason="disconnect",version="2"} 1.0' in text
    assert 'gateway_upstream_cancellations_total{reason="timeout",version="2"} 1.0' in text
    stats = metrics.version_stats()[2]
    assert (stats.requests, stats.errors) == (1, 1)  # the disconnect is no attempt of the version


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


def _busy_metrics() -> Metrics:
    """Three versions with every kind of attempt, latencies across the buckets and beyond the last one."""
    metrics = Metrics()
    rng = np.random.default_rng(7)
    for version in (1, 2, 10):
        for latency in rng.lognormal(-3.0, 1.5, 300):
            metrics.attempt(version, "ok", float(latency), ttft_s=float(latency) / 3, tpot_s=0.002, completion_tokens=4)
        metrics.attempt(version, "ok", 500.0)  # past the last bound: the +Inf bucket
        metrics.attempt(version, "error")
        metrics.attempt(version, OUTCOME_REJECTED)
        metrics.attempt(version, "ok", 0.01, pinned=True)
        metrics.attempt(version, "error", retry=True)
    metrics.attempt(2, "error")
    metrics.shadow(4, ok=True, agreed=False)
    metrics.request("/v1/chat/completions", 200)
    return metrics


def test_the_histograms_are_rendered_as_prometheus_client_renders_them() -> None:
    """The hand-written exposition of the latency histograms is byte for byte ``generate_latest``'s."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import HistogramMetricFamily

    from serving.gateway.metrics import _HELP
    from serving.telemetry import HISTOGRAMS

    metrics = _busy_metrics()
    counts, sums = metrics._histograms.counts(), metrics._histograms._sums

    class Reference:
        def collect(self) -> Any:
            for name, series in HISTOGRAMS.items():
                family = HistogramMetricFamily(series, _HELP[name], labels=["version"])
                for (metric, version), bucket_counts in sorted(counts.items()):
                    if metric == name:
                        cumulative = np.cumsum(bucket_counts)
                        labels = [str(bound) for bound in LATENCY_BUCKETS] + ["+Inf"]
                        family.add_metric(
                            [str(version)], list(zip(labels, cumulative, strict=True)), sums[(metric, version)]
                        )
                yield family

    registry = CollectorRegistry()
    registry.register(Reference())
    expected = generate_latest(registry).decode()
    assert metrics._histograms.render() == expected
    assert expected in metrics.exposition().decode()
    assert expected.count("_bucket{") == 3 * 3 * N_BUCKETS


def _assert_same_stats(left: dict[int, VersionStats], right: dict[int, VersionStats]) -> None:
    assert sorted(left) == sorted(right)
    for version, stats in right.items():
        assert (left[version].requests, left[version].errors) == (stats.requests, stats.errors)
        assert sorted(left[version].histograms) == sorted(stats.histograms)
        for name, bucket_counts in stats.histograms.items():
            np.testing.assert_array_equal(left[version].histograms[name], bucket_counts)


def test_version_stats_are_what_the_controllers_parser_reads_from_the_exposition() -> None:
    metrics = _busy_metrics()

    direct, parsed = metrics.version_stats(), parse_version_stats(metrics.exposition().decode())

    assert sorted(parsed) == [1, 2, 10]
    _assert_same_stats(direct, parsed)
    assert (parsed[2].requests, parsed[2].errors) == (304, 2)
    assert parsed[1].latency[-1] == 1


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ('gateway_upstream_requests_total{note="a \\"quoted\\" value",outcome="error",version="9"} 2.0', "escape"),
        ('gateway_upstream_requests_total{outcome="error",version="9"} 2.0 1700000000000', "timestamp"),
        ('gateway_upstream_requests_total{outcome="error",version="9",} 2.0', "trailing comma"),
    ],
)
def test_a_line_the_hand_reader_does_not_take_sends_the_whole_text_to_the_full_parser(line: str, what: str) -> None:
    """The fast reader of the gateway's plain lines and prometheus_client's parser read the same counts."""
    text = _busy_metrics().exposition().decode()
    plain = parse_version_stats(text)
    # The same text with one more series, in a form only the full parser reads.
    declared = "# TYPE gateway_upstream_requests_total counter\n"
    mixed = parse_version_stats(text.replace(declared, declared + line + "\n", 1))

    assert 9 not in plain and (mixed[9].requests, mixed[9].errors) == (2, 2), what
    del mixed[9]
    _assert_same_stats(mixed, plain)
    assert plain[1].latency.sum() == 301 and (plain[2].requests, plain[2].errors) == (304, 2)


@pytest.mark.parametrize("text", ["<html><body>502 Bad Gateway</body></html>", "", "process_cpu_seconds_total 1.0\n"])
def test_a_text_that_is_not_a_gateways_exposition_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a gateway's /metrics: no gateway_upstream_requests_total family"):
        parse_version_stats(text)


def test_two_apps_in_one_process_do_not_share_counters() -> None:
    first, second = Metrics(), Metrics()
    first.attempt(1, "ok", 0.01)
    assert 1 not in second.version_stats()
