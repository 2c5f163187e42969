"""The metrics contract between the gateway replicas and the rollout controller.

Each gateway exports these Prometheus series on ``/metrics``; the controller scrapes every replica,
adds up what each replica counted since the canary started, and judges the canary on those totals.
Latencies are histograms with log-spaced buckets, each about 9% wide (``BUCKET_GROWTH``: the
boundaries of an OpenTelemetry exponential histogram at scale 3, rounded to three significant
digits), so a quantile read from the histogram is within half a bucket of the true one and a 20%
slowdown moves a quantile two buckets, whatever the model's latency (a millisecond or a minute).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from prometheus_client.parser import text_string_to_metric_families

#: Every live request the split sent to a version, counted once, on the version it was sent to: a
#: canary failure retried on the champion counts against the canary (outcome="error") and the retry is
#: not counted for the champion (it is not a request the split sent there, and at a high canary weight
#: it would make the champion's traffic mostly the canary's failures). Pinned requests
#: (``X-Model-Version``, the controller's probes), retries and shadow mirrors are not counted here:
#: they never enter the canary's verdict.
UPSTREAM_REQUESTS = "gateway_upstream_requests_total"
#: End-to-end latency of the successful live attempts, per version (seconds).
UPSTREAM_LATENCY = "gateway_upstream_latency_seconds"
#: Time to first token of the successful live attempts (seconds), per version.
TTFT = "gateway_time_to_first_token_seconds"
#: Time per output token after the first, of successful live attempts with two tokens or more (seconds).
TPOT = "gateway_time_per_output_token_seconds"
#: Attempts outside the split per version, outcome and kind (``pinned``, ``retry``): for people, never judged.
UNJUDGED_REQUESTS = "gateway_unjudged_requests_total"
LABEL_KIND = "kind"
KIND_PINNED, KIND_RETRY = "pinned", "retry"
#: Completion tokens of the successful live attempts, per version (a histogram over ``TOKEN_BUCKETS``).
COMPLETION_TOKENS = "gateway_completion_tokens"
#: Clients that went away before their answer was complete, per version: never an error of the version,
#: and not in ``UPSTREAM_REQUESTS`` (the attempt neither succeeded nor failed).
CLIENT_DISCONNECTS = "gateway_client_disconnects_total"
#: Requests the gateway cancelled in Triton before they finished, per version and ``reason``
#: (``disconnect``: its client left; ``timeout``: past the upstream timeout, also an error outcome).
CANCELLATIONS = "gateway_upstream_cancellations_total"
CANCEL_DISCONNECT, CANCEL_TIMEOUT = "disconnect", "timeout"
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
LABEL_REASON = "reason"
#: ok: answered; error: a failure that counts against the version (5xx, timeout, connection, injected
#: fault); rejected: the model refused the request as invalid (a 400), which says nothing of its health.
OUTCOME_OK, OUTCOME_ERROR, OUTCOME_REJECTED = "ok", "error", "rejected"

#: Each bucket's upper bound is this multiple of the one below (2 ** (1/8): about 9%).
BUCKET_GROWTH = 2 ** (1 / 8)


def _bounds(low_exponent: int, high_exponent: int) -> tuple[float, ...]:
    values = (2 ** (k / 8) for k in range(low_exponent * 8, high_exponent * 8 + 1))
    return tuple(float(f"{value:.3g}") for value in values)


#: Histogram upper bounds (seconds), 0.98 ms to 128 s: a CPU toy model's milliseconds and a real
#: model's long answers alike. The last bucket (+Inf) holds anything slower.
LATENCY_BUCKETS: tuple[float, ...] = _bounds(-10, 7)
N_BUCKETS = len(LATENCY_BUCKETS) + 1  # with +Inf
#: Upper bounds of the completion-token histogram: powers of two, 1 to 32768 tokens.
TOKEN_BUCKETS: tuple[float, ...] = tuple(float(2**k) for k in range(16))

#: The latency-like metrics the controller judges, by short name, and their series.
HISTOGRAMS: dict[str, str] = {"latency": UPSTREAM_LATENCY, "ttft": TTFT, "tpot": TPOT}

Counts = NDArray[np.float64]


def empty_counts() -> Counts:
    return np.zeros(N_BUCKETS)


def _empty_histograms() -> dict[str, Counts]:
    return {name: empty_counts() for name in HISTOGRAMS}


@dataclass
class VersionStats:
    """One version's live counters: attempts, failures, and per-bucket (not cumulative) latency counts."""

    requests: float = 0.0
    errors: float = 0.0
    histograms: dict[str, Counts] = field(default_factory=_empty_histograms)

    @property
    def latency(self) -> Counts:
        return self.histograms["latency"]

    def minus(self, earlier: VersionStats) -> VersionStats:
        """What happened between ``earlier`` and this scrape (a restarted replica counts from 0)."""
        if self.requests < earlier.requests:
            return self.copy()
        return VersionStats(
            self.requests - earlier.requests,
            self.errors - earlier.errors,
            {name: np.maximum(counts - earlier.histograms[name], 0.0) for name, counts in self.histograms.items()},
        )

    def plus(self, other: VersionStats) -> VersionStats:
        return VersionStats(
            self.requests + other.requests,
            self.errors + other.errors,
            {name: counts + other.histograms[name] for name, counts in self.histograms.items()},
        )

    def copy(self) -> VersionStats:
        return VersionStats(self.requests, self.errors, {k: v.copy() for k, v in self.histograms.items()})


_INDEX = {bound: index for index, bound in enumerate(LATENCY_BUCKETS)}
_SERIES = {f"{series}_bucket": name for name, series in HISTOGRAMS.items()}


def bucket_index(le: float) -> int:
    """The contract's bucket for an exported upper bound (a foreign bound goes to the next one up)."""
    if math.isinf(le):
        return N_BUCKETS - 1
    found = _INDEX.get(le)
    if found is not None:
        return found
    import bisect

    return bisect.bisect_left(LATENCY_BUCKETS, le)


def parse_version_stats(text: str) -> dict[int, VersionStats]:
    """Per-version counters from one replica's ``/metrics`` text.

    ``ValueError`` if the text is not a gateway's exposition (no ``UPSTREAM_REQUESTS`` family declared:
    a proxy's error page, say), so that a replica answering with something else is skipped, not read
    as one that counted nothing.

    Only the series the verdict reads are read (``UPSTREAM_REQUESTS`` and the ``HISTOGRAMS`` buckets).
    The controller reads every replica every tick, so lines of them in the plain form the gateway writes
    are split by hand, several times faster than the full text-format parser (docs/performance.md); a
    text with any such line in another form (an escape in a label, a timestamp) is read whole by
    ``prometheus_client``'s parser.
    """
    if _DECLARED not in text:
        raise ValueError(f"not a gateway's /metrics: no {UPSTREAM_REQUESTS} family in {text[:120]!r}")
    try:
        samples = list(_plain_samples(text))
    except _NotPlainError:
        samples = [
            (sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name in _JUDGED_NAMES
        ]
    stats: dict[int, VersionStats] = {}
    cumulative: dict[tuple[int, str], dict[int, float]] = {}
    for name, labels, value in samples:
        version_label = labels.get(LABEL_VERSION)
        if version_label is None or not (version_label.isascii() and version_label.isdigit()):
            continue
        version = int(version_label)
        entry = stats.get(version)
        if entry is None:  # not setdefault: a VersionStats per line costs more than the rest of the line
            entry = stats[version] = VersionStats()
        if name == UPSTREAM_REQUESTS:
            entry.requests += value
            if labels.get(LABEL_OUTCOME) == OUTCOME_ERROR:
                entry.errors += value
        else:
            index = bucket_index(float(labels["le"]))
            seen = cumulative.setdefault((version, _SERIES[name]), {})
            seen[index] = seen.get(index, 0.0) + value
    for (version, name), by_index in cumulative.items():
        counts, previous = stats[version].histograms[name], 0.0
        for index in sorted(by_index):
            counts[index] += max(by_index[index] - previous, 0.0)
            previous = by_index[index]
    return stats


class _NotPlainError(Exception):
    """A line of a judged series in a form the hand reader does not take."""


_DECLARED = f"# TYPE {UPSTREAM_REQUESTS} counter"
#: The samples the verdict reads, and the start of their lines in the text.
_JUDGED_NAMES = frozenset((UPSTREAM_REQUESTS, *_SERIES))
_JUDGED = tuple(f"{name}{{" for name in _JUDGED_NAMES)


def _plain_samples(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """The judged series' samples from lines ``name{label="value",...} number`` with no backslash in them.

    Without a backslash no quote is escaped, so every ``"`` delimits a label value and ``",`` ends one.
    ``_NotPlainError`` at the first judged line of another form.
    """
    for line in text.split("\n"):
        if not line.startswith(_JUDGED):
            continue
        head, _, value = line.rstrip("\r").rpartition("} ")
        name, _, labels = head.partition("{")
        if "\\" in labels or not labels.endswith('"') or " " in value:
            raise _NotPlainError(line)
        pairs = {}
        for pair in labels[:-1].split('",'):
            key, equals, label = pair.partition('="')
            if not equals or '"' in label:
                raise _NotPlainError(line)
            pairs[key] = label
        try:
            number = float(value)
        except ValueError:
            raise _NotPlainError(line) from None
        yield name, pairs, number


def combine(replicas: Iterable[Mapping[int, VersionStats]]) -> dict[int, VersionStats]:
    """Sum per-version counters over replicas."""
    total: dict[int, VersionStats] = {}
    for replica in replicas:
        for version, entry in replica.items():
            total[version] = total[version].plus(entry) if version in total else entry.copy()
    return total


def quantile(counts: Counts, q: float) -> float | None:
    """The ``q`` quantile of per-bucket ``counts`` in seconds, log-interpolated within its bucket."""
    total = float(counts.sum())
    if total <= 0:
        return None
    rank = q * total
    cumulative = np.cumsum(counts)
    index = int(np.searchsorted(cumulative, rank, side="left"))
    if index >= len(LATENCY_BUCKETS):
        return LATENCY_BUCKETS[-1]  # beyond the last bound: that bound, as Prometheus does
    upper = LATENCY_BUCKETS[index]
    lower = LATENCY_BUCKETS[index - 1] if index > 0 else upper / BUCKET_GROWTH
    below = float(cumulative[index - 1]) if index > 0 else 0.0
    inside = float(counts[index])
    fraction = 0.0 if inside <= 0 else (rank - below) / inside
    return float(lower * (upper / lower) ** fraction)
