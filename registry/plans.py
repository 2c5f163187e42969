"""Pure rollout rules: from a state and a request to the alias moves that carry it out (or a refusal)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from core.steps import check_steps
from registry.errors import InvalidTransitionError
from registry.state import ALIASES, ROLLED_BACK_TAG, WEIGHT_KEY, RolloutState

_PROMOTE = "`python -m registry promote --to champion`"
#: The register stage's action: the only one that grants ``candidate``, so a version's validation record.
REGISTER = "register"


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
class SetPaused:
    paused: bool


@dataclass(frozen=True)
class TagVersion:
    version: int
    key: str
    value: str


Op = SetAlias | DropAlias | SetWeight | SetPaused | TagVersion


@dataclass(frozen=True)
class Serve:
    """What serves once a plan is applied, when it is not simply the ops applied to what served before."""

    aliases: Mapping[str, int]
    canary_weight: int


@dataclass(frozen=True)
class Plan:
    """What one action does, in order. Ops that shift traffic away from a version come first.

    The ops move MLflow's aliases and tags; what serves afterwards (the ``rollout.state`` tag) is
    ``serve`` when given, else what served before with the same ops applied (``served_after``).
    ``outside`` marks the plans that settle outside changes (``registry.outside``): only they may
    touch an alias whose MLflow value differs from what serves.
    """

    action: str
    version: int | None
    summary: str
    ops: tuple[Op, ...]
    serve: Serve | None = None
    outside: bool = False
    #: Said by the plan itself when only the state it was made from can say it (outside changes).
    reason: str | None = None
    details: Mapping[str, str] = field(default_factory=dict)

    def keys(self) -> set[str]:
        """The aliases (and ``weight``) this plan writes."""
        written: set[str] = set()
        for op in self.ops:
            if isinstance(op, SetAlias | DropAlias):
                written.add(op.alias)
            elif isinstance(op, SetWeight):
                written.add(WEIGHT_KEY)
        return written


def served_after(state: RolloutState, plan: Plan) -> Serve:
    """What serves once ``plan`` is applied to ``state`` (only the four rollout aliases are kept)."""
    if plan.serve is not None:
        return plan.serve
    aliases: dict[str, int] = {k: v for k, v in state.aliases.items() if k in ALIASES}
    weight = state.canary_weight
    for op in plan.ops:
        if isinstance(op, SetAlias):
            aliases[op.alias] = op.version
        elif isinstance(op, DropAlias):
            aliases.pop(op.alias, None)
        elif isinstance(op, SetWeight):
            weight = op.percent
    return Serve({k: v for k, v in aliases.items() if k in ALIASES}, weight)


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


def register_candidate(state: RolloutState, version: int, again: bool = False) -> Plan:
    replaced = state.aliases.get("candidate")
    note = f" (replaces v{replaced})" if replaced is not None and replaced != version else ""
    how = "made candidate (registered earlier from the same files and params)" if again else "registered as candidate"
    return Plan(REGISTER, version, f"v{version} {how}{note}", (SetAlias("candidate", version),))


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


def step(state: RolloutState, steps: Sequence[int], version: int | None) -> Plan:
    """The canary's weight moves to the first of ``steps`` above its current weight."""
    try:
        check_steps(steps)
    except ValueError as exc:
        raise InvalidTransitionError(f"rollout steps: {exc}") from exc
    canary = _expect(state, "canary", version)
    if state.paused:
        raise InvalidTransitionError(
            f"the rollout of {state.model} is paused (canary v{canary} at {state.canary_weight}%); "
            "`python -m registry resume` first"
        )
    following = [s for s in steps if s > state.canary_weight]
    if not following:
        raise InvalidTransitionError(
            f"canary v{canary} is at {state.canary_weight}%, the last step of {list(steps)}; promote it with {_PROMOTE}"
        )
    summary = f"canary v{canary} stepped {state.canary_weight}% -> {following[0]}%"
    return Plan("step", canary, summary, (SetWeight(following[0]),))


def promote_to_champion(state: RolloutState, version: int | None) -> Plan:
    """The canary becomes champion; on a model with no champion and no canary, the candidate does."""
    if "canary" not in state.aliases and "champion" not in state.aliases and "candidate" in state.aliases:
        candidate = _expect(state, "candidate", version)
        ops0: tuple[Op, ...] = (SetWeight(0), SetAlias("champion", candidate), DropAlias("candidate"))
        summary0 = f"v{candidate} promoted straight to champion (first release: no champion to compare with)"
        return Plan("promote-champion", candidate, summary0, ops0)
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


def abort(state: RolloutState, version: int | None, stamp: str) -> Plan:
    """Drop the canary: weight 0 first, then the alias; the version is tagged rolled back."""
    if "canary" not in state.aliases:
        raise InvalidTransitionError(f"{state.model} has no canary to abort (state: {state.describe()})")
    canary = _expect(state, "canary", version)
    ops = (SetWeight(0), DropAlias("canary"), TagVersion(canary, ROLLED_BACK_TAG, stamp))
    return Plan("rollback-canary", canary, f"canary v{canary} rolled back; weight 0%", ops)


def rollback(state: RolloutState, version: int | None, stamp: str) -> Plan:
    """Drop the canary if there is one; otherwise return the champion to the previous champion."""
    if "canary" in state.aliases:
        return abort(state, version, stamp)
    if "champion" in state.aliases and "previous-champion" in state.aliases:
        champion = _expect(state, "champion", version)
        previous = state.aliases["previous-champion"]
        ops = (
            SetAlias("champion", previous),
            DropAlias("previous-champion"),
            TagVersion(champion, ROLLED_BACK_TAG, stamp),
        )
        summary = f"champion v{champion} rolled back to v{previous}"
        return Plan("rollback-champion", champion, summary, ops)
    raise InvalidTransitionError(
        f"nothing to roll back on {state.model}: no canary and no previous champion (state: {state.describe()})"
    )


def pause(state: RolloutState) -> Plan:
    """Hold the canary where it is: ``step`` refuses (and the controller stops stepping) until resume."""
    if state.paused:
        raise InvalidTransitionError(f"the rollout of {state.model} is already paused ({state.describe()})")
    canary = state.aliases.get("canary")
    where = f" with canary v{canary} at {state.canary_weight}%" if canary is not None else ""
    return Plan("pause", canary, f"rollout paused{where}", (SetPaused(True),))


def resume(state: RolloutState) -> Plan:
    if not state.paused:
        raise InvalidTransitionError(f"the rollout of {state.model} is not paused ({state.describe()})")
    canary = state.aliases.get("canary")
    where = f" with canary v{canary} at {state.canary_weight}%" if canary is not None else ""
    return Plan("resume", canary, f"rollout resumed{where}", (SetPaused(False),))
