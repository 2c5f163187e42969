"""Rollout actions: each reads the state, plans, then applies under the lock only if nothing moved.

The CLI, the gateway's admin endpoints, the rollout controller and promote.yml all call these
functions. Optimistic concurrency: an action remembers the state it planned from (what serves,
MLflow's aliases and tags, paused), takes the rollout lock (registry.lock, a lease it renews while
it works), re-reads the state, and refuses with ConcurrentChangeError if anything differs. Of two
racing actions exactly one applies: the other either finds the lock taken or, once it is free,
finds the generation moved on.

An action moves MLflow's aliases and tags first and then writes what serves, ``rollout.state``
(registry.state), in one tag write: that write is the moment gateways and controller see the action.
It refuses to write an alias that was changed in MLflow outside the project's actions and not yet
settled (registry.outside; the controller does that); only the settling plans may.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

from mlflow.exceptions import MlflowException

from registry import events, lock, outside, plans
from registry.errors import ConcurrentChangeError, RegistryError
from registry.events import Actor, Event
from registry.state import (
    ALIASES,
    GENERATION_TAG,
    LAST_EVENT_TAG,
    PAUSED_TAG,
    STATE_TAG,
    WEIGHT_TAG,
    RolloutState,
    parse_state_tag,
    read_state,
    state_tag,
)
from registry.store import Store

log = logging.getLogger(__name__)

Planner = Callable[[RolloutState], plans.Plan]
Details = Mapping[str, float | int | str]


def _apply(store: Store, op: plans.Op) -> None:
    client, model = store.client, store.model
    match op:
        case plans.SetAlias(alias, version):
            client.set_registered_model_alias(model, alias, str(version))
        case plans.DropAlias(alias):
            client.delete_registered_model_alias(model, alias)
        case plans.SetWeight(percent):
            client.set_registered_model_tag(model, WEIGHT_TAG, str(percent))
        case plans.SetPaused(paused):
            client.set_registered_model_tag(model, PAUSED_TAG, str(paused).lower())
        case plans.TagVersion(version, key, value):
            client.set_model_version_tag(model, str(version), key, value)


def transact(
    store: Store,
    actor: Actor,
    planner: Planner,
    attempts: int = 1,
    backoff_s: float = 0.5,
    reason: str | None = None,
    details: Details | None = None,
) -> Event:
    """Plan from a fresh read and apply it atomically with respect to other actions.

    ``attempts`` > 1 re-plans from the new state after a conflict: right for the register stage
    (its plan does not depend on what moved), wrong for a person's request (they decided on a state
    they saw), so the CLI actions use one attempt.
    """
    figures = dict(details or {})
    events.check_annotations(reason, figures)  # before anything moves: the record must not fail on them
    for attempt in range(1, attempts + 1):
        try:
            return _transact_once(store, actor, planner, reason, figures)
        except ConcurrentChangeError as exc:
            if attempt == attempts:
                raise
            log.info("%s (attempt %d/%d); retrying in %.1f s", exc, attempt, attempts, backoff_s * attempt)
            time.sleep(backoff_s * attempt)
    raise AssertionError("unreachable")


def _transact_once(
    store: Store, actor: Actor, planner: Planner, reason: str | None, details: dict[str, float | int | str]
) -> Event:
    read = read_state(store)
    before = _usable(store, read)
    plan = planner(before)
    reason = reason if reason is not None else plan.reason
    details = {**plan.details, **details}
    if before.restored_from:
        details["state_restored_from"] = before.restored_from[:500]
    events.check_annotations(reason, details)
    _refuse_unsettled(before, plan)
    with lock.rollout_lock(store, actor.name, plan.action) as held:
        current = read_state(store)
        if current != read:
            raise ConcurrentChangeError(
                f"{store.model} changed while `{plan.action}` was starting: it was "
                f"[{before.describe()}] (generation {before.generation}), now [{current.describe()}] "
                f"(generation {current.generation}); check `python -m registry status` and retry"
            )
        if held.took_over_from:
            details = {**details, "lock_taken_over_from": held.took_over_from[:500]}
        generation = before.generation + 1
        served = plans.served_after(before, plan)
        state_text = state_tag(store.model, served.aliases, served.canary_weight, generation)
        try:
            for done, op in enumerate(plan.ops):
                if not held.held:
                    raise RegistryError(
                        f"`{plan.action}` lost the rollout lock after {done} of {len(plan.ops)} steps (MLflow too "
                        "slow to renew it?); some of MLflow's aliases may have moved, what serves has not. The "
                        "controller settles the difference as an outside change; check `python -m registry status`."
                    )
                _apply(store, op)
            # The one write that moves serving: gateways and the controller follow this tag.
            store.client.set_registered_model_tag(store.model, STATE_TAG, state_text)
            store.client.set_registered_model_tag(store.model, GENERATION_TAG, str(generation))
        except MlflowException as exc:
            raise RegistryError(
                f"`{plan.action}` failed part-way ({exc.message}); some of MLflow's aliases may have moved. "
                "Check `python -m registry status`: if what serves moved, the action took effect; if not, the "
                "controller settles the difference as an outside change, or repeat the action."
            ) from exc
        after = read_state(store)
        event = Event(
            action=plan.action,
            version=plan.version,
            actor=actor.name,
            run_url=actor.run_url,
            at=events.now(),
            before=before.describe(),
            after=after.describe(),
            generation=generation,
            summary=plan.summary,
            reason=reason,
            details=details,
            state=state_text,
        )
        because = f": {reason}" if reason else ""
        try:
            store.client.set_registered_model_tag(
                store.model,
                LAST_EVENT_TAG,
                f"{event.at:%Y-%m-%d %H:%M:%S}Z {plan.summary} (by {actor.name}){because}"[:5000],
            )
            return events.record(store, event)
        except MlflowException as exc:
            # The move itself is done: say so, or an operator would repeat an action that took effect.
            raise RegistryError(
                f"`{plan.action}` took effect (now [{after.describe()}], generation {generation}) but recording "
                f"it in MLflow failed ({exc.message}); do not repeat it, check `python -m registry status`"
            ) from exc


def _usable(store: Store, read: RolloutState) -> RolloutState:
    """``read``, or, when its ``rollout.state`` is damaged or missing, what served at the newest recorded
    event (else MLflow's aliases, for a store from before the tag existed); the action rewrites the tag."""
    if read.damaged is None:
        return read
    recorded = events.recorded_state(store)
    aliases: dict[str, int] | None = None
    if recorded is not None and recorded.state is not None:
        try:
            aliases, weight, generation = parse_state_tag(store.model, recorded.state)
            source = f"the history (`{recorded.action}` at generation {generation})"
        except ValueError:
            aliases = None
    if aliases is None:
        live = read.mlflow_aliases or {}
        aliases, generation = {k: v for k, v in live.items() if k in ALIASES}, 0
        text = read.mlflow_weight or ""
        weight = int(text) if text.isdigit() else 0
        source = "MLflow's aliases (the history holds no recorded state)"
    return read.model_copy(
        update={
            "aliases": aliases,
            "canary_weight": min(weight, 100),
            "generation": max(read.generation, generation),
            "recorded": True,
            "damaged": None,
            "restored_from": f"{source}; it was unusable: {read.damaged}",
        }
    )


def _refuse_unsettled(state: RolloutState, plan: plans.Plan) -> None:
    """A person's or the controller's action must not write over an outside change nobody has settled."""
    if plan.outside:
        return
    pending = {change.key: change for change in state.outside_changes()}
    clash = sorted(plan.keys() & set(pending))
    if clash:
        raise ConcurrentChangeError(
            f"{state.model}: {'; '.join(pending[key].describe() for key in clash)}: changed in MLflow outside the "
            f"project's actions and not settled yet, so `{plan.action}` would write over it. The rollout controller "
            "adopts it or puts it back within a tick (is it running? `make status`); check `python -m registry "
            "status` and retry."
        )


def settle_outside(store: Store, actor: Actor, facts: outside.Facts) -> Event:
    """Adopt or put back every outside change (registry.outside), as one action; NothingToSettleError if none."""
    stamp = _stamp(actor, "outside change")
    return transact(store, actor, lambda s: outside.settle(s, facts, stamp))


def restore_state(store: Store, actor: Actor) -> Event:
    """Write ``rollout.state`` again after it was damaged or removed; NothingToSettleError when it is readable."""
    return transact(store, actor, outside.restore)


def mark_candidate(store: Store, actor: Actor, version: int, again: bool = False) -> Event:
    """Give a registered version the ``candidate`` alias, waiting out concurrent actions."""
    return transact(store, actor, lambda s: plans.register_candidate(s, version, again), attempts=10)


def promote_to_canary(
    store: Store,
    actor: Actor,
    version: int | None = None,
    weight: int = 0,
    reason: str | None = None,
    details: Details | None = None,
) -> Event:
    """The candidate starts as canary at ``weight`` percent."""
    return transact(store, actor, lambda s: plans.promote_to_canary(s, version, weight), reason=reason, details=details)


def promote_to_champion(
    store: Store, actor: Actor, version: int | None = None, reason: str | None = None, details: Details | None = None
) -> Event:
    """The canary becomes champion; with no champion and no canary yet, the candidate does (first release)."""
    return transact(store, actor, lambda s: plans.promote_to_champion(s, version), reason=reason, details=details)


def set_weight(
    store: Store,
    actor: Actor,
    weight: int,
    version: int | None = None,
    reason: str | None = None,
    details: Details | None = None,
) -> Event:
    """The canary's share of traffic, in percent (0..100)."""
    return transact(store, actor, lambda s: plans.set_weight(s, weight, version), reason=reason, details=details)


def step(
    store: Store,
    actor: Actor,
    steps: Sequence[int],
    version: int | None = None,
    reason: str | None = None,
    details: Details | None = None,
) -> Event:
    """The canary's weight moves to the next of ``steps`` above it; refused at the last step (promote then)."""
    chosen = tuple(steps)
    return transact(store, actor, lambda s: plans.step(s, chosen, version), reason=reason, details=details)


def rollback(
    store: Store, actor: Actor, version: int | None = None, reason: str | None = None, details: Details | None = None
) -> Event:
    """Drop the canary (weight 0, alias removed, version tagged), or else return to the previous champion."""
    stamp = _stamp(actor, reason)
    return transact(store, actor, lambda s: plans.rollback(s, version, stamp), reason=reason, details=details)


def abort(
    store: Store, actor: Actor, version: int | None = None, reason: str | None = None, details: Details | None = None
) -> Event:
    """Roll back the canary only (never the champion); refused when there is no canary."""
    stamp = _stamp(actor, reason)
    return transact(store, actor, lambda s: plans.abort(s, version, stamp), reason=reason, details=details)


def pause(store: Store, actor: Actor, reason: str | None = None) -> Event:
    """Hold the rollout: ``step`` refuses and the controller stops moving the weight until resume."""
    return transact(store, actor, plans.pause, reason=reason)


def resume(store: Store, actor: Actor) -> Event:
    return transact(store, actor, plans.resume)


def unlock(store: Store, actor: Actor) -> Event:
    """Clear the rollout lock now (rather than waiting for it to expire), and record who cleared it."""
    state = read_state(store)
    holder = lock.force_unlock(store)
    event = Event(
        action="unlock",
        version=None,
        actor=actor.name,
        run_url=actor.run_url,
        at=events.now(),
        before=state.describe(),
        after=state.describe(),
        generation=state.generation,
        summary=f"cleared the rollout lock held by {holder}",
    )
    return events.record(store, event)


def _stamp(actor: Actor, reason: str | None) -> str:
    because = f": {reason}" if reason else ""
    return f"{events.now().isoformat(timespec='seconds')} by {actor.name}{because}"[:5000]
