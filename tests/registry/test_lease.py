"""Leases against a real MLflow server: one holder, renewals, takeover after expiry, compare-and-delete."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from pipelines import register as stage
from pipelines.register import RegisterInputs
from registry import events, lease, lock, rollout
from registry.errors import ConcurrentChangeError
from registry.events import Actor
from registry.settings import RegistrySettings
from registry.state import read_state
from registry.store import Store
from tests.registry.conftest import ROOT, cli_env

pytestmark = pytest.mark.mlflow

TTL = 2.0


def _race(settings: RegistrySettings, name: str, racers: int = 3) -> list[bool]:
    """Each racer with its own client acquires at the same moment; returns who got it."""
    barrier = threading.Barrier(racers, timeout=60)
    results: list[bool] = [False] * racers

    def attempt(index: int) -> None:
        claim = lease.Lease(Store(settings), name, f"racer-{index}", ttl_s=30)
        barrier.wait()
        results[index] = claim.acquire()

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def _leftovers(store: Store, name: str) -> list[str]:
    prefix = lease.lease_model_name(store, name)
    return [m.name for m in store.client.search_registered_models(f"name LIKE '{prefix}%'")]


def test_two_racers_exactly_one_wins_a_free_or_an_expired_lease(settings: RegistrySettings, store: Store) -> None:
    assert sorted(_race(settings, "free")) == [False, False, True]

    dead = lease.Lease(store, "expired", "dead holder", ttl_s=0.5)
    assert dead.acquire()
    time.sleep(0.8)
    for _ in range(3):  # takeover races, again and again
        results = _race(settings, "expired")
        assert sorted(results) == [False, False, True], results
        holder = lease.describe(store, "expired")
        assert holder is not None and holder.startswith(f"racer-{results.index(True)} ")
        store.client.set_registered_model_tag(lease.lease_model_name(store, "expired"), lease.EXPIRES_TAG, "0")
    assert _leftovers(store, "expired") == [lease.lease_model_name(store, "expired")], "takeover markers left"


def test_takeover_is_recorded_and_the_loser_can_neither_renew_nor_release(store: Store) -> None:
    old = lease.Lease(store, "work", "old", ttl_s=0.5)
    assert old.acquire() and old.held
    blocked = lease.Lease(store, "work", "new", ttl_s=30)
    assert not blocked.acquire(), "a live lease blocks others"
    with pytest.raises(ConcurrentChangeError, match="held by old since"):
        blocked.__enter__()
    time.sleep(0.8)
    assert not old.held, "an expired lease is not held, even before anyone takes it over"

    with lease.Lease(store, "work", "new", ttl_s=30) as new:
        assert new.took_over_from is not None and new.took_over_from.startswith("old since")
        tags = store.client.get_registered_model(new.model_name).tags
        assert tags[lease.TOOK_OVER_TAG] == new.took_over_from and tags[lease.HOLDER_TAG] == "new"
        assert not old.renew()
        old.release()  # compare-and-delete: the old token no longer matches, so nothing is deleted
        assert lease.describe(store, "work") is not None
        assert new.renew() and new.held
    assert lease.describe(store, "work") is None, "the holder's release deletes it"
    assert not new.held


def test_renewing_keeps_a_working_holder_and_unlock_clears_it(store: Store) -> None:
    claim = lease.Lease(store, "beat", "worker", ttl_s=1.5)
    with claim, claim.renewing(every_s=0.3):
        time.sleep(2.5)  # longer than the ttl: the heartbeat keeps it
        assert claim.held
        assert not lease.Lease(store, "beat", "other", ttl_s=1).acquire()
        assert lease.force_release(store, "beat").startswith("worker since")
        time.sleep(0.8)
        assert not claim.held, "a holder whose lease was cleared learns it at the next renewal"
    assert lease.describe(store, "beat") is None


_HOLD_AND_HANG = """
import threading
from registry import rollout
from registry.events import Actor
from registry.settings import RegistrySettings
from registry.store import Store

def hang(store, op):
    print("holding", flush=True)
    threading.Event().wait()

rollout._apply = hang
rollout.set_weight(Store(RegistrySettings()), Actor(name="doomed"), 30)
"""


def test_a_holder_killed_while_holding_the_lock_blocks_others_only_until_its_ttl(
    settings: RegistrySettings, make_project: Callable[..., RegisterInputs]
) -> None:
    settings = settings.model_copy(update={"lock_ttl_s": TTL})
    store = Store(settings)
    actor = Actor(name="survivor")
    stage.register(make_project(), settings, actor)
    rollout.promote_to_champion(store, actor)
    stage.register(make_project(weights=b"two"), settings, actor)
    rollout.promote_to_canary(store, actor, weight=10)
    env = {**cli_env(settings), "REGISTRY_LOCK_TTL_S": str(TTL)}
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD_AND_HANG], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "holding"
        time.sleep(TTL * 1.5)  # alive and renewing: still the holder after its ttl
        with pytest.raises(ConcurrentChangeError, match="`set-weight` by doomed"):
            rollout.set_weight(store, actor, 20)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    killed = time.monotonic()
    deadline = killed + TTL + 15
    while True:
        try:
            event = rollout.set_weight(store, actor, 20, reason="after the holder died")
            break
        except ConcurrentChangeError:
            assert time.monotonic() < deadline, "a dead holder blocked longer than its ttl"
            time.sleep(0.2)
    assert time.monotonic() - killed <= TTL + 2
    assert str(event.details["lock_taken_over_from"]).startswith("`set-weight` by doomed")
    assert read_state(store).canary_weight == 20
    assert events.history(store)[0].details == event.details
    assert lock.describe_holder(store) == "its lock was just released"
