"""Graceful shutdown of one replica: stop taking work, let what is in flight finish, then exit.

On SIGTERM (``python -m serving.gateway`` wires it): ``/readyz`` answers 503 at once; the
listening socket closes, so nginx and any load balancer get "connection refused", the one failure
they retry on another replica safely; every answer from then on carries ``Connection: close``, so
nginx drops each connection it still holds after one more request instead of reusing it. Idle
connections are left open until nginx lets go of them (it closes an idle upstream connection after
``core.ports.EDGE_UPSTREAM_IDLE_S``): a gateway that closed one just as nginx sent a request on it
would lose that request, which nginx must not resend. In-flight requests, streams included, run
to their end, bounded by the replica's upstream timeouts. Then the server stops as uvicorn does.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from core.ports import EDGE_UPSTREAM_IDLE_S

#: How long a drain waits, beyond the requests in flight, for nginx to close the idle connections
#: it holds (it closes them after EDGE_UPSTREAM_IDLE_S; one second of slack for its timer).
DRAIN_IDLE_S = EDGE_UPSTREAM_IDLE_S + 1.0


def drain_limit_s(upstream_timeout_s: float) -> float:
    """The longest a drain waits: a request's canary attempt and its retry on the champion (each
    bounded by the upstream timeout), then the idle wait."""
    return 2 * upstream_timeout_s + DRAIN_IDLE_S


class Drain:
    """Whether this replica is draining, and what it still waits for (requests in flight, recent use)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.started_at: float | None = None
        self.in_flight = 0
        self.last_active = clock()

    @property
    def draining(self) -> bool:
        return self.started_at is not None

    def begin(self) -> None:
        if self.started_at is None:
            self.started_at = self._clock()

    def request_started(self) -> None:
        self.in_flight += 1
        self.last_active = self._clock()

    def request_finished(self) -> None:
        self.in_flight -= 1
        self.last_active = self._clock()

    def elapsed_s(self) -> float:
        return 0.0 if self.started_at is None else self._clock() - self.started_at

    def finished(self, open_connections: int, idle_s: float) -> bool:
        """Nothing left to wait for: no request in flight, and no open connection that a client may
        still send on (none open, or every one idle for ``idle_s``, after which nginx has closed it)."""
        if not self.draining or self.in_flight:
            return False
        return open_connections == 0 or self._clock() - self.last_active >= idle_s
