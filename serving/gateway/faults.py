"""Fault injection per version, like a service mesh's: added delay and a share of failed requests.

Off by default; only the admin API sets rules. An injected error is an ``UpstreamFailedError``, the
error a Triton 5xx becomes, so it takes the same path: a canary's is retried on the champion and
counted against the canary. Rules live in this replica only (a drill sets them on each replica).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from serving.gateway.errors import UpstreamFailedError


class FaultRule(BaseModel):
    """What to do to requests for one version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = Field(ge=1)
    delay_ms: float = Field(0.0, ge=0.0, le=600_000.0)
    error_percent: float = Field(0.0, ge=0.0, le=100.0)


class Faults:
    """The rules in force; ``apply`` runs before every upstream attempt (live and shadow)."""

    def __init__(self, draw: Callable[[], float] = random.random) -> None:
        self._rules: dict[int, FaultRule] = {}
        self._draw = draw

    def set(self, rule: FaultRule) -> None:
        if rule.delay_ms == 0 and rule.error_percent == 0:
            self._rules.pop(rule.version, None)
        else:
            self._rules[rule.version] = rule

    def clear(self) -> None:
        self._rules.clear()

    def rules(self) -> list[FaultRule]:
        return [self._rules[version] for version in sorted(self._rules)]

    async def apply(self, version: int) -> None:
        """Delay, then maybe fail, a request for ``version`` as its rule says (nothing when it has none)."""
        rule = self._rules.get(version)
        if rule is None:
            return
        if rule.delay_ms:
            await asyncio.sleep(rule.delay_ms / 1000)
        if rule.error_percent and self._draw() * 100 < rule.error_percent:
            raise UpstreamFailedError(
                f"injected fault: v{version} fails {rule.error_percent:g}% of requests (POST /admin/faults)",
                version,
                code="injected_fault",
            )
