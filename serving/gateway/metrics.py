"""The gateway's Prometheus series (the contract in ``serving.telemetry``) and its sliding window.

Series, all per replica:
- ``gateway_upstream_requests_total{version, outcome}``: every live attempt on a version; outcome
  ``ok``, ``error`` (a failure the version is blamed for), or ``rejected`` (the model refused the
  request as invalid: the client's fault, counted as a request but not as an error).
- ``gateway_upstream_latency_seconds{version}``, ``gateway_time_to_first_token_seconds{version}``,
  ``gateway_time_per_output_token_seconds{version}``: histograms of the successful live attempts,
  in the contract's log-spaced buckets (``telemetry.LATENCY_BUCKETS``).
- ``gateway_completion_tokens{version}``: a histogram of the completion tokens of those attempts.
- ``gateway_client_disconnects_total{version}``: clients that left before their answer was complete
  (not an attempt outcome: never counted against the version).
- ``gateway_upstream_cancellations_total{version, reason}``: requests cancelled in Triton before they
  finished (``disconnect`` or ``timeout``).
- ``gateway_unjudged_requests_total{version, outcome, kind}``: attempts outside the split, never
  judged: ``pinned`` by ``X-Model-Version`` (people, the controller's probes) and ``retry`` (the
  champion answering for a failed canary attempt).
- ``gateway_requests_total{route, code}``: what clients saw, by route template and status.
- ``gateway_retries_total``: canary failures answered by the champion instead.
- ``gateway_shadow_requests_total{version, outcome}`` and ``gateway_shadow_agreement_total{version}``:
  mirrored requests to the candidate (``ok``/``error``) and how many answered like the champion.

The status page's window figures come from these same counters (``Metrics.version_stats``: what
``parse_version_stats`` reads from this replica's exposition, taken from the counters directly, then
differenced against a snapshot one window old), so they agree with ``/metrics``.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.utils import floatToGoString
from pydantic import BaseModel

from serving.telemetry import (
    CANCELLATIONS,
    CLIENT_DISCONNECTS,
    COMPLETION_TOKENS,
    HISTOGRAMS,
    KIND_PINNED,
    KIND_RETRY,
    LABEL_KIND,
    LABEL_OUTCOME,
    LABEL_REASON,
    LABEL_VERSION,
    LATENCY_BUCKETS,
    OUTCOME_ERROR,
    OUTCOME_OK,
    REQUESTS,
    RETRIES,
    SHADOW_AGREEMENT,
    SHADOW_REQUESTS,
    TOKEN_BUCKETS,
    UNJUDGED_REQUESTS,
    UPSTREAM_REQUESTS,
    Counts,
    VersionStats,
    quantile,
)

_HELP = {
    "latency": "End-to-end latency of successful live attempts per version (seconds).",
    "ttft": "Time to first token of successful live attempts per version (seconds).",
    "tpot": "Time per output token after the first, successful live attempts per version (seconds).",
}
_LABELS = [str(bound) for bound in LATENCY_BUCKETS] + ["+Inf"]


class _Histograms:
    """Per-version histograms over the contract's ~140 buckets: ``observe`` is a bisect, not a scan.

    Not a prometheus_client collector: ``render`` writes the text exposition itself (byte for byte what
    ``generate_latest`` writes for the same ``HistogramMetricFamily``, about 10x faster: three histograms
    of ~140 buckets per version are most of ``/metrics``, and the event loop renders it per scrape).
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], list[float]] = {}
        self._sums: dict[tuple[str, int], float] = {}
        self._heads: dict[tuple[str, int], list[str]] = {}

    def observe(self, name: str, version: int, seconds: float) -> None:
        key = (name, version)
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = [0.0] * (len(LATENCY_BUCKETS) + 1)
            self._sums[key] = 0.0
        counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self._sums[key] += seconds

    def counts(self) -> dict[tuple[str, int], Counts]:
        """Per (short name, version): the per-bucket (not cumulative) counts, +Inf last; a copy."""
        return {key: np.array(counts) for key, counts in self._counts.items()}

    def render(self) -> str:
        lines: list[str] = []
        for name, series in HISTOGRAMS.items():
            lines.append(f"# HELP {series} {_HELP[name]}\n# TYPE {series} histogram\n")
            for key in sorted(self._counts):
                if key[0] != name:
                    continue
                heads = self._heads.get(key)
                if heads is None:
                    heads = self._heads[key] = [
                        f'{series}_bucket{{le="{label}",{LABEL_VERSION}="{key[1]}"}} ' for label in _LABELS
                    ]
                running = 0.0
                for head, count in zip(heads, self._counts[key], strict=True):
                    running += count
                    lines.append(f"{head}{floatToGoString(running)}\n")
                labels = f'{{{LABEL_VERSION}="{key[1]}"}}'
                lines.append(f"{series}_count{labels} {floatToGoString(running)}\n")
                lines.append(f"{series}_sum{labels} {floatToGoString(self._sums[key])}\n")
        return "".join(lines)


class Metrics:
    """One replica's counters in a registry of its own (two apps in one process do not collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._upstream = Counter(
            UPSTREAM_REQUESTS,
            "Live attempts per version and outcome.",
            [LABEL_VERSION, LABEL_OUTCOME],
            registry=self.registry,
        )
        self._unjudged = Counter(
            UNJUDGED_REQUESTS,
            "Attempts outside the split (pinned by X-Model-Version or probes, retries on the champion); never judged.",
            [LABEL_VERSION, LABEL_OUTCOME, LABEL_KIND],
            registry=self.registry,
        )
        self._histograms = _Histograms()
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
        self._tokens = Histogram(
            COMPLETION_TOKENS,
            "Completion tokens of successful live attempts per version.",
            [LABEL_VERSION],
            buckets=TOKEN_BUCKETS,
            registry=self.registry,
        )
        self._disconnects = Counter(
            CLIENT_DISCONNECTS,
            "Clients that left before their answer was complete, per version (not an error of the version).",
            [LABEL_VERSION],
            registry=self.registry,
        )
        self._cancellations = Counter(
            CANCELLATIONS,
            "Requests cancelled in Triton before they finished, per version and reason.",
            [LABEL_VERSION, LABEL_REASON],
            registry=self.registry,
        )
        self._children: dict[tuple[int, str, str | None], Counter] = {}
        self._token_children: dict[int, Any] = {}
        self._by_route: dict[tuple[str, int], Counter] = {}

    def attempt(
        self,
        version: int,
        outcome: str,
        latency_s: float | None = None,
        *,
        pinned: bool = False,
        retry: bool = False,
        ttft_s: float | None = None,
        tpot_s: float | None = None,
        completion_tokens: int | None = None,
    ) -> None:
        """Count one attempt; a live success also records its latency (and TTFT/TPOT/tokens when measured).

        ``pinned`` and ``retry`` attempts are outside the split: counted apart, never judged.
        """
        kind = KIND_PINNED if pinned else KIND_RETRY if retry else None
        # Labelled children cached: ``labels()`` takes a lock and builds a key on every call.
        child = self._children.get((version, outcome, kind))
        if child is None:
            child = self._children[(version, outcome, kind)] = (
                self._upstream.labels(str(version), outcome)
                if kind is None
                else self._unjudged.labels(str(version), outcome, kind)
            )
        child.inc()
        if kind is not None or outcome != OUTCOME_OK:
            return
        for name, seconds in (("latency", latency_s), ("ttft", ttft_s), ("tpot", tpot_s)):
            if seconds is not None:
                self._histograms.observe(name, version, seconds)
        if completion_tokens is not None:
            tokens = self._token_children.get(version)
            if tokens is None:
                tokens = self._token_children[version] = self._tokens.labels(str(version))
            tokens.observe(completion_tokens)

    def disconnect(self, version: int) -> None:
        """A client left before its answer was complete (its request is cancelled in Triton too)."""
        self._disconnects.labels(str(version)).inc()

    def cancelled(self, version: int, reason: str) -> None:
        self._cancellations.labels(str(version), reason).inc()

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
        """``/metrics``: the registry's series, then the latency histograms (rendered apart, see ``_Histograms``)."""
        return generate_latest(self.registry) + self._histograms.render().encode()

    def version_stats(self) -> dict[int, VersionStats]:
        """What ``parse_version_stats`` reads from ``exposition()``, taken from the same counters directly.

        The window snapshots it every few seconds on the event loop: rendering and parsing ~100 KB of
        text took 20-30 ms there, this takes a fraction of a millisecond (``tests/gateway/test_metrics.py``
        checks the two agree).
        """
        stats: dict[int, VersionStats] = {}
        for family in self._upstream.collect():
            for sample in family.samples:
                if sample.name != UPSTREAM_REQUESTS:  # the ``_created`` timestamps
                    continue
                entry = stats.setdefault(int(sample.labels[LABEL_VERSION]), VersionStats())
                entry.requests += sample.value
                if sample.labels[LABEL_OUTCOME] == OUTCOME_ERROR:
                    entry.errors += sample.value
        for (name, version), counts in self._histograms.counts().items():
            stats.setdefault(version, VersionStats()).histograms[name] = counts
        return stats


class VersionWindow(BaseModel):
    """One version's figures over the window (latencies in milliseconds, None without samples)."""

    requests: int
    errors: int
    error_rate: float | None
    p50_ms: float | None
    p95_ms: float | None
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None
    tpot_p50_ms: float | None = None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def summarize(stats: VersionStats) -> VersionWindow:
    ttft, tpot = stats.histograms["ttft"], stats.histograms["tpot"]
    return VersionWindow(
        requests=round(stats.requests),
        errors=round(stats.errors),
        error_rate=stats.errors / stats.requests if stats.requests else None,
        p50_ms=_ms(quantile(stats.latency, 0.5)),
        p95_ms=_ms(quantile(stats.latency, 0.95)),
        ttft_p50_ms=_ms(quantile(ttft, 0.5)),
        ttft_p95_ms=_ms(quantile(ttft, 0.95)),
        tpot_p50_ms=_ms(quantile(tpot, 0.5)),
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
