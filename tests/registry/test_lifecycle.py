"""The alias lifecycle a release goes through, against a real MLflow server."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pipelines import register as stage
from pipelines.register import RegisterInputs
from registry import events, rollout
from registry.errors import InvalidTransitionError
from registry.events import Actor
from registry.settings import RegistrySettings
from registry.state import WEIGHT_TAG, read_state, resolve
from registry.store import Store

pytestmark = pytest.mark.mlflow


def _aliases(store: Store) -> dict[str, int]:
    return read_state(store).aliases


def test_full_alias_lifecycle(
    settings: RegistrySettings, store: Store, actor: Actor, make_project: Callable[..., RegisterInputs]
) -> None:
    def register(weights: bytes) -> int:
        return stage.register(make_project(weights=weights), settings, actor).version

    v1 = register(b"one")
    assert _aliases(store) == {"candidate": v1}

    rollout.promote_to_canary(store, actor, version=v1)
    assert _aliases(store) == {"canary": v1}
    rollout.set_weight(store, actor, 25, version=v1)
    assert read_state(store).canary_weight == 25
    assert store.client.get_registered_model(settings.model_name).tags[WEIGHT_TAG] == "25"
    rollout.promote_to_champion(store, actor, version=v1)
    assert _aliases(store) == {"champion": v1}
    assert read_state(store).canary_weight == 0

    v2 = register(b"two")
    rollout.promote_to_canary(store, actor, weight=10)
    assert _aliases(store) == {"champion": v1, "canary": v2}
    rollout.rollback(store, actor)
    assert _aliases(store) == {"champion": v1}
    assert read_state(store).canary_weight == 0
    rolled_back = store.client.get_model_version(settings.model_name, str(v2)).tags
    assert "rollout.rolled_back" in rolled_back

    v3 = register(b"three")
    rollout.promote_to_canary(store, actor, version=v3)
    rollout.promote_to_champion(store, actor)
    assert _aliases(store) == {"champion": v3, "previous-champion": v1}
    champion = resolve(store, "champion")
    assert champion is not None and champion.version == v3

    rollout.rollback(store, actor)  # no canary: the champion returns to the previous one
    assert _aliases(store) == {"champion": v1}
    with pytest.raises(InvalidTransitionError, match="nothing to roll back"):
        rollout.rollback(store, actor)

    recorded = [(e.action, e.version) for e in reversed(events.history(store))]
    assert recorded == [
        ("register", v1),
        ("promote-canary", v1),
        ("set-weight", v1),
        ("promote-champion", v1),
        ("register", v2),
        ("promote-canary", v2),
        ("rollback-canary", v2),
        ("register", v3),
        ("promote-canary", v3),
        ("promote-champion", v3),
        ("rollback-champion", v3),
    ]
    assert read_state(store).generation == len(recorded)
    assert all(e.actor == "tester" for e in events.history(store))


def test_refusals_name_the_state_and_change_nothing(
    settings: RegistrySettings, store: Store, actor: Actor, make_project: Callable[..., RegisterInputs]
) -> None:
    v1 = stage.register(make_project(), settings, actor).version
    before = read_state(store)
    with pytest.raises(InvalidTransitionError, match="no canary"):
        rollout.set_weight(store, actor, 50)
    with pytest.raises(InvalidTransitionError, match=f"v{v1 + 1} is not the candidate"):
        rollout.promote_to_canary(store, actor, version=v1 + 1)
    with pytest.raises(InvalidTransitionError, match="out of range"):
        rollout.promote_to_canary(store, actor, weight=101)
    # Figures or a reason that could not be recorded are refused before anything moves.
    with pytest.raises(InvalidTransitionError, match="detail key 'p value!'"):
        rollout.promote_to_canary(store, actor, details={"p value!": 0.5})
    with pytest.raises(InvalidTransitionError, match="at most 2000"):
        rollout.promote_to_canary(store, actor, reason="x" * 2001)
    assert read_state(store) == before


def test_github_actor_is_recorded(
    settings: RegistrySettings, store: Store, make_project: Callable[..., RegisterInputs]
) -> None:
    env = {"GITHUB_ACTOR": "octocat", "GITHUB_RUN_ID": "42", "GITHUB_REPOSITORY": "acme/pipeline"}
    bot = Actor.from_env(env)
    stage.register(make_project(), settings, bot)
    event = rollout.promote_to_canary(store, bot)
    assert event.actor == "octocat (GitHub Actions run 42)"
    run = store.client.get_run(str(event.run_id))
    assert run.data.tags["mlflow.user"] == "octocat (GitHub Actions run 42)"
    assert run.data.tags["rollout.run_url"] == "https://github.com/acme/pipeline/actions/runs/42"
    assert run.info.run_name == "promote-canary v1"


def test_an_action_whose_record_fails_says_it_took_effect(
    settings: RegistrySettings,
    store: Store,
    actor: Actor,
    make_project: Callable[..., RegisterInputs],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlflow.exceptions import MlflowException

    from registry import events as events_module
    from registry.errors import RegistryError

    stage.register(make_project(), settings, actor)

    def broken_record(*args: object, **kwargs: object) -> None:
        raise MlflowException("experiment store unavailable")

    monkeypatch.setattr(events_module, "record", broken_record)
    with pytest.raises(RegistryError, match="took effect") as err:
        rollout.promote_to_canary(store, actor, weight=10)
    assert "do not repeat it" in str(err.value)
    info = resolve(store, "canary")  # type: ignore[arg-type]
    assert info is not None and info.version == 1


def test_a_rollout_by_steps_with_pause_reasons_and_figures(
    settings: RegistrySettings, store: Store, actor: Actor, make_project: Callable[..., RegisterInputs]
) -> None:
    """The controller's path: bootstrap a champion, step a canary, pause, resume, abort with its figures."""
    steps = (5, 25, 50, 100)
    v1 = stage.register(make_project(weights=b"one"), settings, actor).version
    rollout.promote_to_champion(store, actor)  # first release: no champion, no canary
    assert _aliases(store) == {"champion": v1}

    v2 = stage.register(make_project(weights=b"two"), settings, actor).version
    rollout.promote_to_canary(store, actor, version=v2)
    figures = {"p_value": 0.41, "requests": 812, "verdict": "healthy"}
    event = rollout.step(store, actor, steps, version=v2, reason="canary healthy", details=figures)
    assert (event.reason, event.details) == ("canary healthy", figures)
    assert read_state(store).canary_weight == 5
    rollout.step(store, actor, steps)
    assert read_state(store).canary_weight == 25

    rollout.pause(store, actor, reason="waiting for the on-call")
    assert read_state(store).paused and read_state(store).canary_weight == 25
    with pytest.raises(InvalidTransitionError, match="paused"):
        rollout.step(store, actor, steps)
    rollout.resume(store, actor)
    assert not read_state(store).paused
    rollout.set_weight(store, actor, 100)
    with pytest.raises(InvalidTransitionError, match=r"last step.*promote --to champion"):
        rollout.step(store, actor, steps)

    aborted = rollout.abort(store, actor, reason="p95 regression", details={"p95_ratio": 2.4, "p_value": 0.001})
    assert aborted.action == "rollback-canary"
    assert _aliases(store) == {"champion": v1} and read_state(store).canary_weight == 0
    rolled_back = store.client.get_model_version(settings.model_name, str(v2)).tags["rollout.rolled_back"]
    assert rolled_back.endswith("by tester: p95 regression")
    with pytest.raises(InvalidTransitionError, match="no canary to abort"):
        rollout.abort(store, actor)  # abort never touches the champion

    recorded = events.history(store)
    assert [e.action for e in recorded[:6]] == ["rollback-canary", "set-weight", "resume", "pause", "step", "step"]
    newest = recorded[0]
    assert newest.reason == "p95 regression" and newest.details == {"p95_ratio": 2.4, "p_value": 0.001}
    assert recorded[3].reason == "waiting for the on-call"
    assert recorded[5].details == figures
    run = store.client.get_run(str(newest.run_id))
    assert run.data.params == {"p95_ratio": "2.4", "p_value": "0.001"}
    assert run.data.tags["rollout.reason"] == "p95 regression"
