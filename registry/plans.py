"""Pure rollout rules: from a state and a request to the alias moves that carry it out (or a refusal)."""

from __future__ import annotations

from dataclasses import dataclass

from registry.errors import InvalidTransitionError
from registry.state import RolloutState

ROLLED_BACK_TAG = "rollout.rolled_back"


@dataclass(frozen=True)
class SetAlias:
    alias: str
    version: int


@dataclass(frozen=True)
class DropAlias:
    alias: str


@dataclass(frozen=True)
class SetWeight:
    percent: int


@dataclass(frozen=True)
class TagVersion:
    version: int
    key: str
    value: str


Op = SetAlias | DropAlias | SetWeight | TagVersion


@dataclass(frozen=True)
class Plan:
    """What one action does, in order. Ops that shift traffic away from a version come first."""

    action: str
    version: int | None
    summary: str
    ops: tuple[Op, ...]


def _check_weight(weight: int) -> None:
    if not 0 <= weight <= 100:
        raise InvalidTransitionError(f"canary weight {weight} is out of range; give a percent from 0 to 100")


def _expect(state: RolloutState, alias: str, expected: int | None) -> int:
    """The version holding ``alias``; refuse when the caller named a different one."""
    actual = state.aliases.get(alias)
    if actual is None:
        raise InvalidTransitionError(f"{state.model} has no {alias} (state: {state.describe()})")
    if expected is not None and expected != actual:
        raise InvalidTransitionError(
            f"v{expected} is not the {alias} of {state.model}: the {alias} is v{actual} "
            f"(state: {state.describe()}); check `python -m registry status`"
        )
    return actual


def register_candidate(state: RolloutState, version: int) -> Plan:
    replaced = state.aliases.get("candidate")
    note = f" (replaces v{replaced})" if replaced is not None else ""
    return Plan("register", version, f"v{version} registered as candidate{note}", (SetAlias("candidate", version),))


def promote_to_canary(state: RolloutState, version: int | None, weight: int) -> Plan:
    _check_weight(weight)
    if "candidate" not in state.aliases:
        raise InvalidTransitionError(
            f"{state.model} has no candidate to promote; a version gets `candidate` when it passes "
            "validation and the register stage runs (`dvc repro`)"
        )
    candidate = _expect(state, "candidate", version)
    if (canary := state.aliases.get("canary")) is not None:
        raise InvalidTransitionError(
            f"v{canary} is already the canary at {state.canary_weight}%; finish it first with "
            "`promote --to champion` or `rollback`"
        )
    if state.aliases.get("champion") == candidate:
        raise InvalidTransitionError(f"v{candidate} is already the champion")
    ops = (SetAlias("canary", candidate), DropAlias("candidate"), SetWeight(weight))
    return Plan("promote-canary", candidate, f"v{candidate} starts as canary at {weight}%", ops)


def set_weight(state: RolloutState, weight: int, version: int | None) -> Plan:
    _check_weight(weight)
    canary = _expect(state, "canary", version)
    summary = f"canary v{canary} weight {state.canary_weight}% -> {weight}%"
    return Plan("set-weight", canary, summary, (SetWeight(weight),))


def promote_to_champion(state: RolloutState, version: int | None) -> Plan:
    canary = _expect(state, "canary", version)
    champion = state.aliases.get("champion")
    # Traffic first goes back to the old champion, then the champion alias moves in one write:
    # an alias names one version, so there is never a second champion.
    ops: list[Op] = [SetWeight(0)]
    if champion is not None:
        ops.append(SetAlias("previous-champion", champion))
    ops += [SetAlias("champion", canary), DropAlias("canary")]
    previous = f" (v{champion} kept as previous-champion)" if champion is not None else ""
    return Plan("promote-champion", canary, f"v{canary} promoted to champion{previous}", tuple(ops))


def rollback(state: RolloutState, version: int | None, stamp: str) -> Plan:
    """Drop the canary if there is one; otherwise return the champion to the previous champion."""
    if "canary" in state.aliases:
        canary = _expect(state, "canary", version)
        ops = (SetWeight(0), DropAlias("canary"), TagVersion(canary, ROLLED_BACK_TAG, stamp))
        return Plan("rollback-canary", canary, f"canary v{canary} rolled back; weight 0%", ops)
    if "champion" in state.aliases and "previous-champion" in state.aliases:
        champion = _expect(state, "champion", version)
        previous = state.aliases["previous-champion"]
        ops2 = (
            SetAlias("champion", previous),
            DropAlias("previous-champion"),
            TagVersion(champion, ROLLED_BACK_TAG, stamp),
        )
        summary = f"champion v{champion} rolled back to v{previous}"
        return Plan("rollback-champion", champion, summary, ops2)
    raise InvalidTransitionError(
        f"nothing to roll back on {state.model}: no canary and no previous champion (state: {state.describe()})"
    )
