"""Sliding windows over scrapes of every gateway replica's ``/metrics``.

Counters are kept per replica, so a replica that restarts (its counters back at zero) or misses a
scrape does not distort the sum: each replica's window is its latest scrape minus its scrape from
``interval`` seconds earlier, and the replicas' windows are then added up.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence

import httpx

from serving.telemetry import VersionStats, combine, parse_version_stats

log = logging.getLogger(__name__)

Snapshot = dict[int, VersionStats]


def _minus(latest: Snapshot, earlier: Snapshot) -> Snapshot:
    return {version: stats.minus(earlier.get(version, VersionStats())) for version, stats in latest.items()}


class Scraper:
    """Fetches each replica's metrics; an unreachable replica is skipped (and logged), not fatal."""

    def __init__(self, urls: Sequence[str], timeout_s: float = 2.0) -> None:
        self.urls = list(urls)
        self._client = httpx.Client(timeout=timeout_s)
        self.unreachable: list[str] = []

    def __call__(self) -> dict[str, Snapshot]:
        found: dict[str, Snapshot] = {}
        self.unreachable = []
        for url in self.urls:
            try:
                response = self._client.get(url)
                response.raise_for_status()
            except httpx.HTTPError as exc:
                self.unreachable.append(url)
                log.warning("cannot scrape %s: %s", url, exc)
                continue
            found[url] = parse_version_stats(response.text)
        return found

    def close(self) -> None:
        self._client.close()


class Windows:
    """Keeps timestamped scrapes per replica and answers "what happened in the last N seconds"."""

    def __init__(self, horizon_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.horizon_s = horizon_s
        self._clock = clock
        self._history: dict[str, deque[tuple[float, Snapshot]]] = {}

    def add(self, scrapes: dict[str, Snapshot]) -> None:
        now = self._clock()
        for replica, snapshot in scrapes.items():
            history = self._history.setdefault(replica, deque())
            history.append((now, snapshot))
            while len(history) > 2 and now - history[1][0] >= self.horizon_s:
                history.popleft()

    def reset(self) -> None:
        """Forget history (a new canary, or a new step: judge only traffic at the current weight)."""
        self._history.clear()

    def last(self, seconds: float) -> tuple[Snapshot, float]:
        """Per-version counts over about the last ``seconds``, and the span actually covered."""
        now = self._clock()
        deltas, span = [], 0.0
        for history in self._history.values():
            if len(history) < 2:
                continue
            latest_t, latest = history[-1]
            base_t, base = history[0]
            for t, snapshot in history:
                if now - t >= seconds:
                    base_t, base = t, snapshot
            deltas.append(_minus(latest, base))
            span = max(span, latest_t - base_t)
        return combine(deltas), span
