"""Shadow traffic: mirror a share of live requests to the ``candidate`` version, in the background.

A mirror starts only after the champion has answered the live request (its answer is what the
candidate is compared with), runs as a task of its own, and its answer, error and latency never
reach the client. At most ``GATEWAY_SHADOW_CONCURRENCY`` mirrors run at once; beyond that a mirror
is skipped rather than queued, so a slow candidate cannot build up work behind live traffic.
Agreement is exact equality of the answers after trimming and case-folding: meaningful for greedy
decoding (temperature 0, the served default), noisy for sampled requests.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from serving.gateway.errors import UpstreamError
from serving.gateway.lograte import RateLimitedLog
from serving.gateway.metrics import Metrics
from serving.gateway.reconcile import View
from serving.gateway.upstream import Inference, Sampling

log = logging.getLogger(__name__)
_aggregated = RateLimitedLog(log)  # a candidate failing every mirror must not log a line per request

#: ``call(version, messages, sampling)``: one whole attempt on a version, faults included.
Call = Callable[[int, bytes, Sampling], Awaitable[Inference]]


def same_answer(a: str, b: str) -> bool:
    return a.strip().casefold() == b.strip().casefold()


class Shadow:
    """Decides which requests to mirror, runs the mirrors, counts what they found."""

    def __init__(
        self,
        percent: float,
        concurrency: int,
        call: Call,
        metrics: Metrics,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.percent = percent
        self.concurrency = concurrency
        self._call = call
        self._metrics = metrics
        self._draw = draw
        self._tasks: set[asyncio.Task[None]] = set()

    def target(self, view: View) -> int | None:
        """The candidate to mirror to: registered as ``candidate``, ready, and not already live."""
        candidate = view.alias("candidate")
        if candidate is None or candidate not in view.ready:
            return None
        if candidate in (view.alias("champion"), view.alias("canary")):
            return None
        return candidate

    def maybe_mirror(
        self,
        view: View,
        messages: bytes,
        sampling: Sampling,
        champion_answer: Inference,
    ) -> bool:
        """Start a mirror of a request the champion answered, if drawn; ``sampling`` is the request's own."""
        if self.percent <= 0 or self._draw() * 100 >= self.percent:
            return False
        version = self.target(view)
        if version is None or len(self._tasks) >= self.concurrency:
            return False
        mirrored = view.ready[version].fill(sampling)
        task = asyncio.create_task(self._mirror(version, messages, mirrored, champion_answer.text))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def drain(self) -> None:
        """Wait for the mirrors in flight (tests, and a graceful shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _mirror(self, version: int, messages: bytes, sampling: Sampling, expected: str) -> None:
        try:
            answer = await self._call(version, messages, sampling)
        except UpstreamError as exc:
            _aggregated.warning(
                f"shadow v{version} {exc.code}", "shadow request to v%d failed: %s", version, exc.message
            )
            self._metrics.shadow(version, ok=False, agreed=False)
            return
        except Exception:  # a mirror's bug must never surface anywhere but this log
            log.exception("shadow request to v%d failed unexpectedly", version)
            self._metrics.shadow(version, ok=False, agreed=False)
            return
        self._metrics.shadow(version, ok=True, agreed=same_answer(answer.text, expected))
