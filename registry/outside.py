"""Outside changes: an alias or the weight tag moved in MLflow (its UI, a script), not by a project action.

Pure rules, from what serves, what MLflow shows and a few facts the caller gathered (which versions
passed validation, which Triton cannot serve), to one plan that adopts every acceptable change and
puts every other one back, each with its reason. Adopting a change is what the matching action
would have done: a new champion keeps the one it replaced as ``previous-champion``; the canary made
champion ends its rollout; a removed canary is rolled back; a new canary starts at 0% (the
controller steps it). A version that never had the ``candidate`` alias (no ``register`` event in the
history) never passed validation and is refused for any alias; champion and canary must also be
servable (loaded in Triton with their files verified, which the caller does before planning).
The rules run in a fixed order (champion, canary, weight, candidate, previous-champion), so when a
person moved several at once, an earlier rule's consequence wins over a later edit, and says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from registry.errors import ConcurrentChangeError, InvalidTransitionError
from registry.plans import DropAlias, Op, Plan, Serve, SetAlias, SetWeight, TagVersion
from registry.state import ALIASES, ROLLED_BACK_TAG, WEIGHT_KEY, OutsideChange, RolloutState

ADOPT = "adopt-outside-change"
REVERT = "revert-outside-change"
RESTORE = "restore-state"
#: Who made an outside change, as recorded: MLflow keeps no author (nor time) for an alias or tag edit.
UNKNOWN_AUTHOR = "not recorded by MLflow (it keeps no author for an alias or tag edit)"
SERVED_ROLES = ("champion", "canary")


class NothingToSettleError(InvalidTransitionError):
    """MLflow already agrees with what serves (someone settled it first)."""


@dataclass(frozen=True)
class Facts:
    """What the rules need to know beyond the state, about the versions the outside changes name.

    ``validated``: version -> whether it ever had ``candidate``. ``serving``: version -> None when it is
    loaded in Triton with its files verified, else why it cannot serve; None for the whole map means
    "not asked yet" (``to_serve`` plans as if every validated version could serve).
    """

    validated: Mapping[int, bool]
    serving: Mapping[int, str | None] | None = None


def versions_named(state: RolloutState) -> set[int]:
    """Every version an outside change points an alias at (the ones to check for validation)."""
    return {c.mlflow for c in state.outside_changes() if c.key != WEIGHT_KEY and isinstance(c.mlflow, int)}


def to_serve(state: RolloutState, validated: Mapping[int, bool]) -> set[int]:
    """Versions that would start serving (as champion or canary) if the outside changes were adopted."""
    decided = _Rules(state, Facts(validated, None), stamp="").run()
    serving = {state.aliases.get(role) for role in SERVED_ROLES}
    return {v for role in SERVED_ROLES if (v := decided.target.get(role)) is not None and v not in serving}


def settle(state: RolloutState, facts: Facts, stamp: str) -> Plan:
    """One plan for every outside change in ``state``, with its reason and details; NothingToSettleError when
    there is none. ``stamp`` (when, by whom) goes on a canary rolled back because its alias was removed.
    """
    changes = state.outside_changes()
    if not changes:
        raise NothingToSettleError(f"MLflow agrees with what serves ({state.describe()})")
    unchecked = versions_named(state) - set(facts.validated)
    if unchecked:
        raise ConcurrentChangeError(
            f"MLflow moved again while the outside change was checked (now {state.describe_outside()}); "
            "checked again next tick"
        )
    decided = _Rules(state, facts, stamp).run()
    live = state.mlflow_aliases if state.mlflow_aliases is not None else state.aliases
    ops: list[Op] = []
    for alias in ALIASES:
        want = decided.target.get(alias)
        if want != live.get(alias):
            ops.append(SetAlias(alias, want) if want is not None else DropAlias(alias))
    if state.mlflow_weight != str(decided.weight):
        ops.append(SetWeight(decided.weight))
    ops += decided.tags
    parts = [*(f"adopted {text}" for text in decided.adopted), *(f"put back {text}" for text in decided.put_back)]
    more = f"; {len(changes) - 1} more" if len(changes) > 1 else ""
    version = next((c.mlflow for c in changes if isinstance(c.mlflow, int)), changes[0].serving)
    details = {f"outside.{key}": text[:500] for key, text in decided.outcome.items()}
    return Plan(
        REVERT if decided.refused else ADOPT,
        version if isinstance(version, int) else None,
        f"outside change ({changes[0].describe()}{more}): {'; '.join(parts)}",
        tuple(ops),
        serve=Serve(dict(decided.target), decided.weight),
        outside=True,
        reason="; ".join(decided.refused) or f"made in MLflow outside the project's actions; who: {UNKNOWN_AUTHOR}",
        details={**details, "outside.by": UNKNOWN_AUTHOR},
    )


def restore(state: RolloutState) -> Plan:
    """Write ``rollout.state`` again (from the history, else MLflow's aliases) after it was damaged or removed."""
    if state.restored_from is None:
        raise NothingToSettleError(f"rollout.state of {state.model} is readable")
    summary = f"rollout.state restored from {state.restored_from}: {state.describe()}"
    return Plan(RESTORE, None, summary, (), outside=True)


class _Rules:
    """One pass of the rules over the outside changes of ``state``."""

    def __init__(self, state: RolloutState, facts: Facts, stamp: str) -> None:
        self.state, self.facts, self.stamp = state, facts, stamp
        self.target: dict[str, int] = {k: v for k, v in state.aliases.items() if k in ALIASES}
        self.weight = state.canary_weight
        #: Aliases an earlier rule set as a consequence, with why (a later edit of them is put back).
        self.consequence: dict[str, str] = {}
        self.adopted: list[str] = []
        self.put_back: list[str] = []
        self.refused: list[str] = []
        self.outcome: dict[str, str] = {}
        self.tags: list[TagVersion] = []

    def run(self) -> _Rules:
        changes = {c.key: c for c in self.state.outside_changes()}
        for key in ("champion", "canary", WEIGHT_KEY, "candidate", "previous-champion"):
            change = changes.get(key)
            if change is None:
                continue
            if key in self.consequence:
                self._follow_consequence(change)
            elif key == "champion":
                self._champion(change)
            elif key == "canary":
                self._canary(change)
            elif key == WEIGHT_KEY:
                self._weight(change)
            else:
                self._listed(change)
        return self

    # -- the rules ------------------------------------------------------------------------------

    def _champion(self, change: OutsideChange) -> None:
        new, old = change.mlflow, change.serving
        if not isinstance(new, int):
            self._refuse(
                change,
                "a model that serves traffic needs a champion; to replace it, set `champion` on another "
                "validated version, or run `python -m registry rollback`",
            )
            return
        if why := self._why_not(new, "champion"):
            self._refuse(change, why)
            return
        notes = [f"champion {_v(old)} -> v{new}"]
        self.target["champion"] = new
        if old is not None:
            self._consequence("previous-champion", old, f"v{old}, the champion v{new} replaced, is kept as it")
            notes.append(f"v{old} kept as previous-champion")
        elif self.target.get("previous-champion") == new:
            self._consequence("previous-champion", None, f"v{new} is now the champion")
        canary = self.target.get("canary")
        if canary == new:
            self._consequence("canary", None, f"the canary v{new} became champion")
            self.weight = 0
            notes.append("it was the canary: its rollout ends")
        elif canary is not None and self.weight:
            self.weight = 0
            notes.append(f"canary v{canary} starts again from 0% against the new champion")
        if self.target.get("candidate") == new:
            self._consequence("candidate", None, f"the candidate v{new} became champion")
        self._adopt(change, ", ".join(notes))

    def _canary(self, change: OutsideChange) -> None:
        new, old = change.mlflow, change.serving
        if not isinstance(new, int):
            assert old is not None  # a change: it served before
            self.target.pop("canary", None)
            self.weight = 0
            self.tags.append(TagVersion(old, ROLLED_BACK_TAG, f"{self.stamp}: its canary alias was removed in MLflow"))
            self._adopt(change, f"canary v{old} removed: rolled back, weight 0%")
            return
        if new == self.target.get("champion"):
            self._refuse(change, f"v{new} is the champion; the canary must be another version")
            return
        if why := self._why_not(new, "canary"):
            self._refuse(change, why)
            return
        self.target["canary"] = new
        self.weight = 0  # a new canary starts from nothing (a weight edited with it is taken next)
        replaced = f" (v{old} leaves the rollout)" if old is not None else ""
        if self.target.get("candidate") == new:
            self._consequence("candidate", None, f"the candidate v{new} became canary")
        self._adopt(change, f"canary {_v(old)} -> v{new} at 0%{replaced}; the controller steps it")

    def _weight(self, change: OutsideChange) -> None:
        text = change.mlflow
        if not isinstance(text, str):
            self._refuse(change, "the weight tag was removed; it holds the canary's share of traffic")
            return
        value = int(text) if text.isdigit() else None
        if value is None or value > 100:
            self._refuse(change, f"weight {text!r} is not a whole percent from 0 to 100")
            return
        canary = self.target.get("canary")
        if canary is None and value != 0:
            self._refuse(change, f"weight {value}% with no canary: there is no canary to send traffic to")
            return
        before = self.weight
        self.weight = value
        self._adopt(change, f"canary v{canary} weight {before}% -> {value}%" if canary else f"weight {value}%")

    def _listed(self, change: OutsideChange) -> None:
        """``candidate`` and ``previous-champion``: no traffic, but only validated versions."""
        key, new, old = change.key, change.mlflow, change.serving
        if not isinstance(new, int):
            self.target.pop(key, None)
            self._adopt(change, f"{key} v{old} removed")
            return
        if why := self._why_not(new, key):
            self._refuse(change, why)
            return
        for role in SERVED_ROLES:
            if self.target.get(role) == new:
                self._refuse(change, f"v{new} is the {role}; {key} must be another version")
                return
        self.target[key] = new
        self._adopt(change, f"{key} {_v(old)} -> v{new}")

    def _follow_consequence(self, change: OutsideChange) -> None:
        """An alias an earlier rule already set: MLflow's edit stands only if it agrees."""
        want = self.target.get(change.key)
        if change.mlflow == want:
            self.outcome[change.key] = f"{_v(change.serving)} -> {_v(want)}: adopted"
            return
        why = self.consequence[change.key]
        self.put_back.append(f"{change.key} {_v(change.mlflow)} -> {_v(want)} ({why})")
        self.refused.append(f"{change.key}: {why}")
        self.outcome[change.key] = f"{_v(change.mlflow)} put back to {_v(want)}: {why}"

    # -- helpers --------------------------------------------------------------------------------

    def _why_not(self, version: int, role: str) -> str | None:
        if not self.facts.validated.get(version, False):
            return (
                f"v{version} never passed validation (it never had the `candidate` alias: no `register` event "
                f"in the history), so it may not be {role}"
            )
        if role not in SERVED_ROLES or self.facts.serving is None:
            return None
        if version not in self.facts.serving:
            raise ConcurrentChangeError(f"v{version} would serve as {role} but was not loaded first; next tick")
        problem = self.facts.serving[version]
        return None if problem is None else f"v{version} cannot be served, so it may not be {role}: {problem}"

    def _consequence(self, alias: str, version: int | None, why: str) -> None:
        if version is None:
            self.target.pop(alias, None)
        else:
            self.target[alias] = version
        self.consequence[alias] = why

    def _adopt(self, change: OutsideChange, text: str) -> None:
        self.adopted.append(text)
        self.outcome[change.key] = f"{_shown(change)}: adopted ({text})"

    def _refuse(self, change: OutsideChange, why: str) -> None:
        back = f"{change.serving}%" if change.key == WEIGHT_KEY else _v(change.serving)
        self.put_back.append(f"{change.key} to {back}")
        self.refused.append(why)
        self.outcome[change.key] = f"{_shown(change)}: put back to {back} ({why})"


def _v(version: int | str | None) -> str:
    return "none" if version is None else f"v{version}"


def _shown(change: OutsideChange) -> str:
    if change.key == WEIGHT_KEY:
        return f"{change.serving}% -> {'removed' if change.mlflow is None else repr(change.mlflow)}"
    return f"{_v(change.serving)} -> {_v(change.mlflow)}"
