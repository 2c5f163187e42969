"""Racing actions: exactly one of two concurrent actions applies, the other fails cleanly."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from pipelines import register as stage
from pipelines.register import RegisterInputs
from registry import events, lease, lock, rollout
from registry.errors import ConcurrentChangeError
from registry.events import Actor, Event
from registry.settings import RegistrySettings
from registry.state import read_state
from registry.store import Store
from tests.registry.conftest import ROOT, cli_env

pytestmark = pytest.mark.mlflow

Action = Callable[[Store, Actor], Event]


def _race(settings: RegistrySettings, first: Action, second: Action, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Run both actions in threads, each with its own client; both read the state before either claims."""
    barrier = threading.Barrier(2, timeout=60)
    real_lock = lock.rollout_lock

    @contextmanager
    def lock_after_both_read(*args: object, **kwargs: object) -> Iterator[lease.Lease]:
        barrier.wait()
        with real_lock(*args, **kwargs) as held:  # type: ignore[arg-type]
            yield held

    monkeypatch.setattr(lock, "rollout_lock", lock_after_both_read)
    outcomes: dict[str, str] = {}

    def attempt(name: str, action: Action) -> None:
        try:
            action(Store(settings), Actor(name=name))
            outcomes[name] = "won"
        except ConcurrentChangeError as exc:
            outcomes[name] = f"lost: {exc}"

    threads = [threading.Thread(target=attempt, args=item) for item in (("a", first), ("b", second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return [outcomes["a"], outcomes["b"]]


def test_two_racing_canary_promotions_exactly_one_wins(
    settings: RegistrySettings,
    store: Store,
    make_project: Callable[..., RegisterInputs],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stage.register(make_project(), settings, Actor(name="stage"))
    outcomes = _race(
        settings,
        lambda s, a: rollout.promote_to_canary(s, a, weight=10),
        lambda s, a: rollout.promote_to_canary(s, a, weight=50),
        monkeypatch,
    )
    assert sorted(o.split(":")[0] for o in outcomes) == ["lost", "won"], outcomes
    state = read_state(store)
    assert state.aliases == {"canary": 1}
    assert state.canary_weight == (10 if outcomes[0] == "won" else 50)
    assert state.generation == 2
    assert [e.action for e in events.history(store)] == ["promote-canary", "register"]
    assert store.client.search_registered_models(f"name LIKE '{settings.lock_model_name}%'") == []


def test_promotion_racing_a_rollback_exactly_one_wins(
    settings: RegistrySettings,
    store: Store,
    make_project: Callable[..., RegisterInputs],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    actor = Actor(name="setup")
    stage.register(make_project(weights=b"1"), settings, actor)
    rollout.promote_to_canary(store, actor)
    rollout.promote_to_champion(store, actor)
    stage.register(make_project(weights=b"2"), settings, actor)
    rollout.promote_to_canary(store, actor, weight=20)

    outcomes = _race(settings, rollout.promote_to_champion, rollout.rollback, monkeypatch)

    assert sorted(o.split(":")[0] for o in outcomes) == ["lost", "won"], outcomes
    aliases = read_state(store).aliases
    if outcomes[0] == "won":
        assert aliases == {"champion": 2, "previous-champion": 1}
    else:
        assert aliases == {"champion": 1}


def test_two_cli_processes_racing_one_promotion(
    settings: RegistrySettings, store: Store, make_project: Callable[..., RegisterInputs]
) -> None:
    stage.register(make_project(), settings, Actor(name="stage"))
    command = [sys.executable, "-m", "registry", "promote", "--to", "canary", "--version", "1"]
    procs = [
        subprocess.Popen(command, cwd=ROOT, env=cli_env(settings), stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    results = [(proc.wait(timeout=120), proc.stderr.read() if proc.stderr else "") for proc in procs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    loser = next(err for code, err in results if code != 0)
    # Depending on timing the loser meets the lock, a moved generation, or the winner's new state;
    # each is a one-line refusal, never a traceback.
    assert loser.startswith("registry: ") and "Traceback" not in loser, loser
    assert read_state(store).aliases == {"canary": 1}
    assert [e.action for e in events.history(store)].count("promote-canary") == 1
