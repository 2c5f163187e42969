"""The gateway's Prometheus series (the contract in ``serving.telemetry``) and its sliding window.

Series, all per replica:
- ``gateway_upstream_requests_total{version, outcome}``: every attempt on a version; outcome ``ok``,
  ``error`` (a failure the version is blamed for), or ``rejected`` (the model refused the request
  as invalid: the client's fault, counted as a request but not as an error).
- ``gateway_upstream_latency_seconds{version}``: histogram of the successful attempts
  (``telemetry.LATENCY_BUCKETS``).
- ``gateway_requests_total{route, code}``: what clients saw, by route template and status.
- ``gateway_retries_total``: canary failures answered by the champion instead.
- ``gateway_shadow_requests_total{version, outcome}`` and ``gateway_shadow_agreement_total{version}``:
  mirrored requests to the candidate (``ok``/``error``) and how many answered like the champion.

The status page's window figures come from these same counters (``parse_version_stats`` of this
replica's own exposition, differenced against a snapshot one window old), so they agree with
``/metrics`` by construction.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel

from serving.telemetry import (
    LABEL_OUTCOME,
    LABEL_VERSION,
    LATENCY_BUCKETS,
    OUTCOME_ERROR,
    OUTCOME_OK,
    REQUESTS,
    RETRIES,
    SHADOW_AGREEMENT,
    SHADOW_REQUESTS,
    UPSTREAM_LATENCY,
    UPSTREAM_REQUESTS,
    VersionStats,
    parse_version_stats,
    quantile,
)

#: An attempt the model refused as invalid (HTTP 400 from Triton): neither a success nor the version's fault.


class Metrics:
    """One replica's counters in a registry of its own (two apps in one process do not collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._upstream = Counter(
            UPSTREAM_REQUESTS,
            "Attempts per version and outcome.",
            [LABEL_VERSION, LABEL_OUTCOME],
            registry=self.registry,
        )
        self._latency = Histogram(
            UPSTREAM_LATENCY,
            "Latency of successful attempts per version (seconds).",
            [LABEL_VERSION],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._requests = Counter(
            REQUESTS, "Client-facing requests by route and status.", ["route", "code"], registry=self.registry
        )
        self._retries = Counter(RETRIES, "Canary failures answered by the champion.", registry=self.registry)
        self._shadow = Counter(
            SHADOW_REQUESTS,
            "Mirrored requests per candidate version.",
            [LABEL_VERSION, LABEL_OUTCOME],
            registry=self.registry,
        )
        self._agreement = Counter(
            SHADOW_AGREEMENT, "Mirrored answers equal to the champion's.", [LABEL_VERSION], registry=self.registry
        )
        self._children: dict[tuple[int, str], Counter] = {}
        self._histograms: dict[int, Histogram] = {}
        self._by_route: dict[tuple[str, int], Counter] = {}

    def attempt(self, version: int, outcome: str, latency_s: float | None = None) -> None:
        # Labelled children cached: ``labels()`` takes a lock and builds a key on every call.
        child = self._children.get((version, outcome))
        if child is None:
            child = self._children[(version, outcome)] = self._upstream.labels(str(version), outcome)
        child.inc()
        if outcome == OUTCOME_OK and latency_s is not None:
            histogram = self._histograms.get(version)
            if histogram is None:
                histogram = self._histograms[version] = self._latency.labels(str(version))
            histogram.observe(latency_s)

    def request(self, route: str, code: int) -> None:
        child = self._by_route.get((route, code))
        if child is None:
            child = self._by_route[(route, code)] = self._requests.labels(route, str(code))
        child.inc()

    def retry(self) -> None:
        self._retries.inc()

    def shadow(self, version: int, ok: bool, agreed: bool) -> None:
        self._shadow.labels(str(version), OUTCOME_OK if ok else OUTCOME_ERROR).inc()
        if agreed:
            self._agreement.labels(str(version)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def version_stats(self) -> dict[int, VersionStats]:
        return parse_version_stats(self.exposition().decode())


class VersionWindow(BaseModel):
    """One version's figures over the window (latencies in milliseconds, None without samples)."""

    requests: int
    errors: int
    error_rate: float | None
    p50_ms: float | None
    p95_ms: float | None


def summarize(stats: VersionStats) -> VersionWindow:
    p50, p95 = quantile(stats, 0.5), quantile(stats, 0.95)
    return VersionWindow(
        requests=round(stats.requests),
        errors=round(stats.errors),
        error_rate=stats.errors / stats.requests if stats.requests else None,
        p50_ms=None if p50 is None else round(p50 * 1000, 3),
        p95_ms=None if p95 is None else round(p95 * 1000, 3),
    )


class Window:
    """Snapshots of the counters; ``figures`` is now minus the oldest snapshot inside the window."""

    def __init__(self, metrics: Metrics, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._metrics = metrics
        self.window_s = window_s
        self._clock = clock
        self._snapshots: deque[tuple[float, dict[int, VersionStats]]] = deque()
        self.snapshot()

    @property
    def step_s(self) -> float:
        """How often to snapshot: the window spans between ``window_s - step_s`` and ``window_s``."""
        return max(self.window_s / 12, 0.5)

    def snapshot(self) -> None:
        now = self._clock()
        self._snapshots.append((now, self._metrics.version_stats()))
        while len(self._snapshots) > 1 and self._snapshots[0][0] < now - self.window_s:
            self._snapshots.popleft()

    def figures(self) -> tuple[dict[int, VersionWindow], dict[int, VersionWindow], float]:
        """Per version: (over the window, since start), and the seconds the window actually spans."""
        now = self._clock()
        current = self._metrics.version_stats()
        start = next((s for s in self._snapshots if s[0] >= now - self.window_s), self._snapshots[-1])
        window = {v: summarize(stats.minus(start[1].get(v, VersionStats()))) for v, stats in current.items()}
        totals = {v: summarize(stats) for v, stats in current.items()}
        return window, totals, now - start[0]
