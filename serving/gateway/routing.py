"""Which version answers a request: champion or canary by the canary weight, sticky per session. Pure.

A session key (the ``X-Session-Id`` header, else the request's ``user``) hashes to a point in
[0, 100); the session goes to the canary when that point is below the weight. So a session keeps
its version while the weight holds or grows, a canary session stays on the canary as the weight
grows, and the canary's share of sessions tracks the weight. Requests without a key draw a fresh
point each time. Only versions Triton reports READY are chosen; a canary that is not ready sends
its share to the champion.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from serving.gateway.errors import InvalidRequestError, ModelNotFoundError, NoReadyVersionError

_SCALE = 100.0 / 2**64
# ASCII digits only: str.isdigit() also takes "²" or "٣", which int() then refuses (or reads).
_VERSION = re.compile(r"v?([0-9]{1,9})")


@dataclass(frozen=True, slots=True)
class Split:
    """What routing needs to know: the registry's aliases and weight, and what Triton has ready."""

    champion: int | None
    canary: int | None
    weight: int
    ready: frozenset[int]


@dataclass(frozen=True, slots=True)
class Route:
    """Send to ``version``; on a failure there, ``fallback`` (the champion) answers instead."""

    version: int
    fallback: int | None
    reason: str


def bucket(key: str) -> float:
    """The session's point in [0, 100): stable across processes and replicas (no per-process hash seed)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") * _SCALE


def parse_pin(header: str | None) -> int | None:
    """The version an ``X-Model-Version`` header asks for, or None without one."""
    if header is None or not header.strip():
        return None
    match = _VERSION.fullmatch(header.strip())
    if match is None or int(match[1]) < 1:
        raise InvalidRequestError(
            f"X-Model-Version must be a registry version number such as 3, got {header[:20]!r}",
            param="X-Model-Version",
        )
    return int(match[1])


def choose(split: Split, *, key: str | None, draw: float, pinned: int | None = None) -> Route:
    """The route for one request; ``draw`` in [0, 100) is used when there is no session key."""
    if pinned is not None:
        if pinned not in split.ready:
            served = ", ".join(str(v) for v in sorted(split.ready)) or "none"
            raise ModelNotFoundError(
                f"version {pinned} is not served (served versions: {served})", param="X-Model-Version"
            )
        return Route(pinned, None, "pinned")
    if split.champion is None:
        raise NoReadyVersionError("the registry names no champion yet; promote a version first")
    champion_ready = split.champion in split.ready
    point = bucket(key) if key is not None else draw
    has_canary = split.canary is not None and split.canary != split.champion
    if has_canary and point < split.weight:
        assert split.canary is not None
        if split.canary in split.ready:
            return Route(split.canary, split.champion if champion_ready else None, "canary")
        if champion_ready:
            return Route(split.champion, None, "canary-not-ready")
    if not champion_ready:
        raise NoReadyVersionError(f"champion v{split.champion} is not ready in Triton; retry shortly")
    return Route(split.champion, None, "champion")
