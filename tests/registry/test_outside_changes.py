"""Aliases and tags moved with the MLflow client directly, as the MLflow UI does, against a real server:
what serves does not move, `registry status` shows the difference, actions refuse to write over it,
and settling it adopts a validated version or puts an unvalidated one back, in the history."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from pipelines import register as stage
from pipelines.register import RegisterInputs
from registry import __main__ as cli
from registry import events, outside, rollout
from registry.errors import ConcurrentChangeError
from registry.events import Actor
from registry.settings import RegistrySettings
from registry.state import GENERATION_TAG, STATE_TAG, WEIGHT_TAG, get_version, read_state
from registry.store import Store
from tests.registry.conftest import cli_env

pytestmark = pytest.mark.mlflow

Register = Callable[[bytes], int]


@pytest.fixture
def register(settings: RegistrySettings, actor: Actor, make_project: Callable[..., RegisterInputs]) -> Register:
    def run(weights: bytes) -> int:
        return stage.register(make_project(weights=weights), settings, actor).version

    return run


def _released(store: Store, actor: Actor, register: Register) -> tuple[int, int]:
    """v1 then v2 released: champion v2, previous-champion v1."""
    v1 = register(b"one")
    rollout.promote_to_champion(store, actor, v1)
    v2 = register(b"two")
    rollout.promote_to_canary(store, actor, v2)
    rollout.promote_to_champion(store, actor, v2)
    return v1, v2


def _unvalidated(store: Store, like: int) -> int:
    """A version registered by hand (the UI's "Register model" on a run): it never had ``candidate``."""
    info = get_version(store, like)
    return int(store.client.create_model_version(store.model, info.source, run_id=info.run_id).version)


def _status(settings: RegistrySettings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> dict:  # type: ignore[type-arg]
    for key, value in cli_env(settings).items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    assert cli.main(["status", "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_an_alias_set_in_mlflow_moves_nothing_until_settled_and_status_shows_it(
    settings: RegistrySettings,
    store: Store,
    actor: Actor,
    register: Register,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    v1, v2 = _released(store, actor, register)
    held = read_state(store)

    store.client.set_registered_model_alias(store.model, "champion", str(v1))  # the UI's alias editor

    state = read_state(store)
    assert (state.aliases, state.generation) == (held.aliases, held.generation)  # what serves did not move
    assert state.mlflow_aliases == {"champion": v1, "previous-champion": v1}
    assert [c.describe() for c in state.outside_changes()] == [f"champion v{v1} in MLflow, v{v2} serving"]
    status = _status(settings, monkeypatch, capsys)
    assert status["champion"]["version"] == v2 and status["outside_changes"] == [
        f"champion v{v1} in MLflow, v{v2} serving"
    ]
    assert cli.main(["status"]) == 0
    text = capsys.readouterr().out
    print(text)
    assert "changed in MLflow outside the project's actions, not settled yet" in text
    assert f"  champion v{v1} in MLflow, v{v2} serving\n" in text
    # An action that would write over the unsettled alias is refused (exit 3 from the CLI) and says why;
    # one that writes other aliases goes ahead.
    with pytest.raises(ConcurrentChangeError, match="changed in MLflow outside the project's actions"):
        rollout.rollback(store, actor)
    v3 = register(b"three")
    assert read_state(store).aliases["candidate"] == v3


def test_a_validated_champion_set_in_mlflow_is_adopted_and_recorded(
    store: Store, actor: Actor, register: Register
) -> None:
    v1, v2 = _released(store, actor, register)
    store.client.set_registered_model_alias(store.model, "champion", str(v1))
    assert events.validated(store, v1) and events.validated(store, v2)

    event = rollout.settle_outside(store, actor, outside.Facts({v1: True}, {v1: None}))

    state = read_state(store)
    assert state.aliases == {"champion": v1, "previous-champion": v2} == state.mlflow_aliases
    assert state.outside_changes() == ()
    recorded = events.history(store, 1)[0]
    assert (recorded.action, recorded.version, recorded.generation) == (outside.ADOPT, v1, event.generation)
    assert recorded.details["outside.by"] == outside.UNKNOWN_AUTHOR
    assert "champion" in recorded.summary and "outside the project's actions" in (recorded.reason or "")
    # The event carries what serves after it, so a damaged state tag can be restored from the history.
    assert recorded.state == store.client.get_registered_model(store.model).tags[STATE_TAG]


def test_an_unvalidated_version_set_in_mlflow_is_put_back_with_the_reason_everywhere(
    settings: RegistrySettings,
    store: Store,
    actor: Actor,
    register: Register,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, v2 = _released(store, actor, register)
    rogue = _unvalidated(store, v2)
    store.client.set_registered_model_alias(store.model, "champion", str(rogue))
    assert not events.validated(store, rogue)

    rollout.settle_outside(store, actor, outside.Facts({rogue: False}, {}))

    state = read_state(store)
    assert state.aliases["champion"] == v2 == state.mlflow_aliases["champion"]  # type: ignore[index]
    recorded = events.history(store, 1)[0]
    assert recorded.action == outside.REVERT
    assert f"v{rogue} never passed validation" in (recorded.reason or "")
    status = _status(settings, monkeypatch, capsys)
    assert status["outside_changes"] == [] and f"v{rogue} never passed validation" in status["last_event"]


def test_the_weight_tag_edited_in_mlflow_is_adopted_or_put_back(store: Store, actor: Actor, register: Register) -> None:
    v1 = register(b"one")
    rollout.promote_to_champion(store, actor, v1)
    v2 = register(b"two")
    rollout.promote_to_canary(store, actor, v2, weight=5)

    store.client.set_registered_model_tag(store.model, WEIGHT_TAG, "40")
    rollout.settle_outside(store, actor, outside.Facts({}, {}))
    assert read_state(store).canary_weight == 40

    store.client.set_registered_model_tag(store.model, WEIGHT_TAG, "forty")
    rollout.settle_outside(store, actor, outside.Facts({}, {}))
    state = read_state(store)
    assert state.canary_weight == 40 and state.mlflow_weight == "40"
    assert "'forty' is not a whole percent" in (events.history(store, 1)[0].reason or "")


def test_a_hand_edited_or_removed_state_tag_is_ignored_and_restored_from_the_history(
    settings: RegistrySettings,
    store: Store,
    actor: Actor,
    register: Register,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, v2 = _released(store, actor, register)
    good = read_state(store)
    text = store.client.get_registered_model(store.model).tags[STATE_TAG]
    store.client.set_registered_model_tag(store.model, STATE_TAG, text.replace(f'"champion": {v2}', '"champion": 9'))

    damaged = read_state(store)
    assert damaged.damaged is not None and "does not match its check" in damaged.damaged
    assert "does not match its check" in _status(settings, monkeypatch, capsys)["state_problem"]
    restored = rollout.restore_state(store, actor)
    assert restored.action == outside.RESTORE and "the history" in restored.summary
    assert read_state(store).aliases == good.aliases and read_state(store).generation == good.generation + 1

    store.client.delete_registered_model_tag(store.model, STATE_TAG)
    assert read_state(store).damaged == f"{STATE_TAG} is missing at generation {good.generation + 1}"
    # Any action restores it on the way (the register stage must work without a controller running).
    v3 = register(b"three")
    after = read_state(store)
    assert after.damaged is None and after.aliases == {**good.aliases, "candidate": v3}
    assert "state_restored_from" in events.history(store, 1)[0].details
    with pytest.raises(outside.NothingToSettleError):
        rollout.restore_state(store, actor)


def test_a_store_from_before_the_state_tag_is_recorded_from_its_aliases(
    store: Store, actor: Actor, register: Register
) -> None:
    v1 = register(b"one")
    rollout.promote_to_champion(store, actor, v1)
    # As a store written before rollout.state existed: aliases and generation, no state tag, no
    # recorded state in the history.
    store.client.delete_registered_model_tag(store.model, STATE_TAG)
    for run in store.client.search_runs([store.experiment_id(store.settings.events_experiment)]):
        store.client.delete_run(run.info.run_id)
    generation = int(store.client.get_registered_model(store.model).tags[GENERATION_TAG])

    v2 = register(b"two")

    state = read_state(store)
    assert state.aliases == {"champion": v1, "candidate": v2} and state.generation == generation + 1
    assert "MLflow's aliases" in events.history(store, 1)[0].details["state_restored_from"]  # type: ignore[operator]
