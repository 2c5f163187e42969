"""The controller settles aliases moved in MLflow outside the project's actions, against a real MLflow:
it loads a validated version in Triton before anything routes to it, puts back what never passed
validation or cannot load (loading nothing for the former), rolls back a canary whose alias was
removed, and restores a hand-edited ``rollout.state``."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry import events, outside, rollout
from registry.events import Actor
from registry.state import STATE_TAG, get_version, read_state
from registry.store import Store
from tests.rollout.test_controller import Clock, FakeTriton, Gateways, Register, _controller, _ticks, register

pytestmark = pytest.mark.mlflow

__all__ = ["register"]  # the fixture, shared with the controller's tests


class WatchedTriton(FakeTriton):
    """Records, for each load, which champion the registry was serving at that moment."""

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        self.champion_at_load: dict[str, int | None] = {}

    def load(self, name: str) -> None:
        self.champion_at_load[name] = read_state(self.store).version_of("champion")
        super().load(name)


def _released(store: Store, actor: Actor, register: Register) -> tuple[int, int]:
    v1 = register(b"one")
    rollout.promote_to_champion(store, actor, v1)
    v2 = register(b"two")
    rollout.promote_to_canary(store, actor, v2)
    rollout.promote_to_champion(store, actor, v2)
    return v1, v2


def test_a_champion_set_in_mlflow_is_loaded_first_then_adopted_and_the_old_one_drains(
    store: Store, actor: Actor, register: Register, tmp_path: Path
) -> None:
    v1, v2 = _released(store, actor, register)
    triton, clock = WatchedTriton(store), Clock()
    controller = _controller(store, tmp_path, triton, Gateways(store), clock)
    controller.tick()
    assert triton.models == {f"{store.model}-v{v2}"}  # v1 left every role: not loaded

    store.client.set_registered_model_alias(store.model, "champion", str(v1))  # as the MLflow UI does
    controller.tick()

    state = read_state(store)
    assert state.aliases == {"champion": v1, "previous-champion": v2} and state.outside_changes() == ()
    # Loaded (its files verified) while v2 still served; v2 stays loaded through the unload grace.
    assert triton.champion_at_load[f"{store.model}-v{v1}"] == v2
    assert triton.models == {f"{store.model}-v{v1}", f"{store.model}-v{v2}"}
    event = events.history(store, 1)[0]
    assert (event.action, event.version) == (outside.ADOPT, v1) and event.actor == controller.actor.name
    _ticks(controller, clock, 5)
    assert triton.models == {f"{store.model}-v{v1}"} and f"{store.model}-v{v2}" in triton.unloaded
    controller.close()


def test_a_version_that_never_passed_validation_is_put_back_and_never_loaded(
    store: Store, actor: Actor, register: Register, tmp_path: Path
) -> None:
    _, v2 = _released(store, actor, register)
    info = get_version(store, v2)
    rogue = int(store.client.create_model_version(store.model, info.source, run_id=info.run_id).version)
    triton, clock = FakeTriton(), Clock()
    controller = _controller(store, tmp_path, triton, Gateways(store), clock)
    controller.tick()

    for alias in ("champion", "canary"):
        store.client.set_registered_model_alias(store.model, alias, str(rogue))
        controller.tick()
        state = read_state(store)
        assert state.aliases == {"champion": v2, "previous-champion": v2 - 1} == state.mlflow_aliases
        event = events.history(store, 1)[0]
        assert event.action == outside.REVERT and f"v{rogue} never passed validation" in (event.reason or "")
        assert f"may not be {alias}" in (event.reason or "")
    assert f"{store.model}-v{rogue}" not in triton.models and triton.unloaded == []
    controller.close()


def test_a_version_triton_cannot_load_is_put_back_with_tritons_reason(
    store: Store, actor: Actor, register: Register, tmp_path: Path
) -> None:
    v1, v2 = _released(store, actor, register)
    triton, clock = FakeTriton(), Clock()
    triton.refuse[f"{store.model}-v{v1}"] = "SyntaxError in model.py"
    controller = _controller(store, tmp_path, triton, Gateways(store), clock)
    controller.tick()

    store.client.set_registered_model_alias(store.model, "champion", str(v1))
    controller.tick()

    assert read_state(store).aliases["champion"] == v2 == read_state(store).mlflow_aliases["champion"]  # type: ignore[index]
    event = events.history(store, 1)[0]
    assert event.action == outside.REVERT and "SyntaxError in model.py" in (event.reason or "")
    assert triton.models == {f"{store.model}-v{v2}"}
    controller.close()


def test_a_canary_whose_alias_is_removed_in_mlflow_is_rolled_back(
    store: Store, actor: Actor, register: Register, tmp_path: Path
) -> None:
    v1 = register(b"one")
    rollout.promote_to_champion(store, actor, v1)
    v2 = register(b"two")
    rollout.promote_to_canary(store, actor, v2)
    triton, clock = FakeTriton(), Clock()
    controller = _controller(store, tmp_path, triton, Gateways(store), clock)
    _ticks(controller, clock, 5, until=lambda: read_state(store).canary_weight > 0)
    assert read_state(store).canary_weight > 0

    store.client.delete_registered_model_alias(store.model, "canary")
    controller.tick()

    state = read_state(store)
    assert state.aliases == {"champion": v1} and state.canary_weight == 0 and state.outside_changes() == ()
    assert "removed in MLflow" in (get_version(store, v2).rolled_back or "")
    assert events.history(store, 1)[0].action == outside.ADOPT
    controller.close()


def test_a_hand_edited_state_tag_is_restored_before_anything_acts_on_it(
    store: Store, actor: Actor, register: Register, tmp_path: Path
) -> None:
    _, v2 = _released(store, actor, register)
    triton, clock = FakeTriton(), Clock()
    controller = _controller(store, tmp_path, triton, Gateways(store), clock)
    controller.tick()
    served = read_state(store).aliases
    store.client.set_registered_model_tag(store.model, STATE_TAG, '{"aliases": {"champion": 1}}')

    controller.tick()

    state = read_state(store)
    assert state.damaged is None and state.aliases == served
    assert events.history(store, 1)[0].action == outside.RESTORE
    assert triton.models == {f"{store.model}-v{v2}"} and triton.unloaded == []
    controller.close()
