"""What every gateway replica counted since the canary started, from scrapes of their ``/metrics``.

Counters are kept per replica, so a replica that restarts (its counters back at zero) or misses a
scrape does not distort the sum: each scrape adds, per replica, what it counted since that replica's
previous scrape (everything it reports, after a restart), and the totals are the sum over replicas.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import httpx

from serving.telemetry import VersionStats, parse_version_stats

log = logging.getLogger(__name__)

Snapshot = dict[int, VersionStats]


class Scraper:
    """Fetches each replica's metrics; a replica unreachable or not answering with metrics is skipped (and logged)."""

    def __init__(self, urls: Sequence[str], timeout_s: float = 2.0) -> None:
        self.urls = list(urls)
        self._client = httpx.Client(timeout=timeout_s, trust_env=False)
        self.unreachable: list[str] = []

    def __call__(self) -> dict[str, Snapshot]:
        found: dict[str, Snapshot] = {}
        unreachable = []
        for url in self.urls:
            try:
                response = self._client.get(url)
                response.raise_for_status()
                # A replica answering with something else (a proxy's error page) is one not read this
                # tick, as one that is down: its totals wait for its next good scrape.
                found[url] = parse_version_stats(response.text)
            except (httpx.HTTPError, ValueError) as exc:
                unreachable.append(url)
                if url not in self.unreachable:  # one line per replica going away, not one per tick
                    log.warning("cannot scrape %s: %s", url, exc)
        self.unreachable = unreachable
        return found

    def close(self) -> None:
        self._client.close()


class Totals:
    """Per-version totals since ``reset``: the first scrape of a replica is its baseline."""

    def __init__(self) -> None:
        self._last: dict[str, Snapshot] = {}
        self.total: Snapshot = {}

    def reset(self, scrapes: dict[str, Snapshot]) -> None:
        self._last = {replica: dict(snapshot) for replica, snapshot in scrapes.items()}
        self.total = {}

    def add(self, scrapes: dict[str, Snapshot]) -> None:
        for replica, snapshot in scrapes.items():
            earlier = self._last.get(replica)
            self._last[replica] = snapshot
            if earlier is None:
                continue  # a replica first seen now: what it counted before is not this canary's window
            for version, stats in snapshot.items():
                delta = stats.minus(earlier.get(version, VersionStats()))
                self.total[version] = self.total[version].plus(delta) if version in self.total else delta

    def get(self, version: int) -> VersionStats:
        return self.total.get(version, VersionStats())
