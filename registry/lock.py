"""The rollout lock: a short lease (registry.lease) that every alias-moving action holds and renews.

A holder that dies blocks others only until its lease expires (``REGISTRY_LOCK_TTL_S``); the next
action takes it over and its event records whom it took over from. ``python -m registry unlock``
clears a lock at once, for whoever cannot wait.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from registry import lease
from registry.errors import ConcurrentChangeError
from registry.store import Store

LOCK_NAME = "rollout-lock"


@contextmanager
def rollout_lock(store: Store, holder: str, action: str) -> Iterator[lease.Lease]:
    """Hold and keep renewing the rollout lock for the block; ConcurrentChangeError if another holds it."""
    claim = lease.Lease(store, LOCK_NAME, f"`{action}` by {holder}", store.settings.lock_ttl_s)
    if not claim.acquire():
        raise ConcurrentChangeError(
            f"another action is changing {store.model} ({describe_holder(store)}); run "
            "`python -m registry status` and retry. A holder that died blocks others only until its lease "
            f"expires ({store.settings.lock_ttl_s:g} s); `python -m registry unlock` clears it at once."
        )
    try:
        with claim.renewing():
            yield claim
    finally:
        claim.release()


def describe_holder(store: Store) -> str:
    return lease.describe(store, LOCK_NAME) or "its lock was just released"


def force_unlock(store: Store) -> str:
    """Remove the rollout lock whoever holds it; return who held it."""
    return lease.force_release(store, LOCK_NAME)
