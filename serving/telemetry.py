"""The metrics contract between the gateway replicas and the rollout controller.

Each gateway exports these Prometheus series on ``/metrics``; the controller scrapes every replica,
sums them, and judges the canary on the difference between two scrapes (one analysis window).
Latencies are histograms with the fixed buckets below, so the per-version samples of a window are
ordinal counts the rank test can compare without the raw values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

#: Every request a version answered or failed, counted per attempt: a canary failure retried on the
#: champion counts once against the canary (outcome="error") and once for the champion.
UPSTREAM_REQUESTS = "gateway_upstream_requests_total"
#: Latency of the successful attempts, per version (seconds).
UPSTREAM_LATENCY = "gateway_upstream_latency_seconds"
#: Client-facing requests by route and status code (what users saw).
REQUESTS = "gateway_requests_total"
#: Canary failures answered by the champion instead (no labels).
RETRIES = "gateway_retries_total"
#: Shadow traffic: mirrored requests per candidate version ({version, outcome=ok|error}), and how many of
#: its answers matched the champion's ({version}). Shadow attempts never appear in the upstream series.
SHADOW_REQUESTS = "gateway_shadow_requests_total"
SHADOW_AGREEMENT = "gateway_shadow_agreement_total"

LABEL_VERSION = "version"
LABEL_OUTCOME = "outcome"
#: ok: answered; error: a failure that counts against the version (5xx, timeout, connection, injected
#: fault); rejected: the model refused the request as invalid (a 400), which says nothing of its health.
OUTCOME_OK, OUTCOME_ERROR, OUTCOME_REJECTED = "ok", "error", "rejected"

#: Histogram buckets (seconds): fine enough around a tiny model's 10-100 ms and a real model's seconds.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
    1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0,
)  # fmt: skip


@dataclass
class VersionStats:
    """One version's counters: attempts, failures, and successful-latency histogram bucket counts."""

    requests: float = 0.0
    errors: float = 0.0
    # Cumulative counts per upper bound (Prometheus' ``le``), +Inf included.
    buckets: dict[float, float] = field(default_factory=dict)

    def minus(self, earlier: VersionStats) -> VersionStats:
        """The counts of one window: this scrape minus an earlier one (a restarted replica counts from 0)."""
        if self.requests < earlier.requests:
            return VersionStats(self.requests, self.errors, dict(self.buckets))
        return VersionStats(
            self.requests - earlier.requests,
            self.errors - earlier.errors,
            {le: count - earlier.buckets.get(le, 0.0) for le, count in self.buckets.items()},
        )

    def plus(self, other: VersionStats) -> VersionStats:
        keys = set(self.buckets) | set(other.buckets)
        return VersionStats(
            self.requests + other.requests,
            self.errors + other.errors,
            {le: self.buckets.get(le, 0.0) + other.buckets.get(le, 0.0) for le in keys},
        )

    def bucket_counts(self) -> list[tuple[float, float]]:
        """Non-cumulative counts per bucket, in order of upper bound."""
        out, previous = [], 0.0
        for le in sorted(self.buckets):
            out.append((le, self.buckets[le] - previous))
            previous = self.buckets[le]
        return out


def parse_version_stats(text: str) -> dict[int, VersionStats]:
    """Per-version counters from one replica's ``/metrics`` text."""
    stats: dict[int, VersionStats] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            version_label = sample.labels.get(LABEL_VERSION)
            if version_label is None or not version_label.isdigit():
                continue
            entry = stats.setdefault(int(version_label), VersionStats())
            if sample.name == UPSTREAM_REQUESTS:
                entry.requests += sample.value
                if sample.labels.get(LABEL_OUTCOME) == OUTCOME_ERROR:
                    entry.errors += sample.value
            elif sample.name == UPSTREAM_LATENCY + "_bucket":
                le = float(sample.labels["le"])
                entry.buckets[le] = entry.buckets.get(le, 0.0) + sample.value
    return stats


def combine(replicas: Iterable[Mapping[int, VersionStats]]) -> dict[int, VersionStats]:
    """Sum per-version counters over replicas."""
    total: dict[int, VersionStats] = {}
    for replica in replicas:
        for version, entry in replica.items():
            total[version] = total.get(version, VersionStats()).plus(entry)
    return total


def quantile(stats: VersionStats, q: float) -> float | None:
    """The ``q`` quantile of the latency histogram in seconds, interpolated within its bucket."""
    counts = stats.bucket_counts()
    total = sum(count for _, count in counts)
    if total <= 0:
        return None
    rank, seen, lower = q * total, 0.0, 0.0
    finite = [le for le, _ in counts if le != float("inf")]
    for le, count in counts:
        if count > 0 and seen + count >= rank:
            if le == float("inf"):
                return finite[-1] if finite else None
            return lower + (le - lower) * (rank - seen) / count
        seen += count
        lower = le if le != float("inf") else lower
    return finite[-1] if finite else None
