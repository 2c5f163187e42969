"""Warnings that recur per request, aggregated: the first of a run at once, then one line per interval.

A canary that fails every request, or a Triton that is down, would otherwise log a warning per
request: thousands a minute under load, burying the lines that matter. Each kind of warning (a key)
logs its first occurrence at once (the state change), then at most one line per interval saying how
many more there were; a key quiet for a whole interval starts over, so the next occurrence is
logged at once again. ``flush_all`` (the app calls it every second) writes counts that are due.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

#: Seconds between two lines for the same kind of warning.
INTERVAL_S = 10.0

_instances: weakref.WeakSet[RateLimitedLog] = weakref.WeakSet()


@dataclass
class _Run:
    window_start: float
    last_seen: float
    suppressed: int = 0
    message: str = ""


class RateLimitedLog:
    """``warning(key, message, *args)``: like ``logger.warning``, at most one line per key and interval."""

    def __init__(
        self, logger: logging.Logger, interval_s: float = INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._clock = clock
        self._runs: dict[str, _Run] = {}
        _instances.add(self)

    def warning(self, key: str, message: str, *args: object) -> None:
        now = self._clock()
        self.flush(now)
        run = self._runs.get(key)
        if run is None:
            self._runs[key] = _Run(window_start=now, last_seen=now)
            self.logger.warning(message, *args)
            return
        run.suppressed += 1
        run.last_seen = now
        run.message = message % args if args else message

    def flush(self, now: float | None = None) -> None:
        """Write the counts whose interval is over; forget runs that went quiet for a whole interval."""
        now = self._clock() if now is None else now
        for key, run in list(self._runs.items()):
            if now - run.window_start < self.interval_s:
                continue
            if run.suppressed:
                self.logger.warning(
                    "%s (and %d more like it in the last %.0f s)", run.message, run.suppressed, now - run.window_start
                )
                run.suppressed = 0
                run.window_start = now
            elif now - run.last_seen >= self.interval_s:
                del self._runs[key]


def flush_all() -> None:
    """Flush every aggregated log of this process (the app's background task calls it)."""
    for instance in list(_instances):
        instance.flush()
