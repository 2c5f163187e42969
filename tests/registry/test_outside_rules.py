"""Fast unit layer: the rules for aliases moved in MLflow outside the project's actions (registry.outside),
the ``rollout.state`` tag's format, and what an action refuses while such a change is not settled."""

from __future__ import annotations

import json

import pytest

from registry import outside, plans
from registry.errors import ConcurrentChangeError
from registry.outside import ADOPT, REVERT, Facts
from registry.plans import DropAlias, SetAlias, SetWeight, TagVersion
from registry.state import ROLLED_BACK_TAG, STATE_TAG, RolloutState, parse_state_tag, state_tag


def _state(serving: dict[str, int], weight: int = 0, mlflow: dict[str, int] | None = None, tag: str | None = None):  # type: ignore[no-untyped-def]
    """What serves, and MLflow's aliases and weight tag (the same as what serves unless given)."""
    return RolloutState(
        model="m",
        aliases=serving,
        canary_weight=weight,
        generation=7,
        mlflow_aliases=dict(serving if mlflow is None else mlflow),
        mlflow_weight=str(weight) if tag is None else tag,
    )


def _facts(*validated: int, refused: dict[int, str] | None = None) -> Facts:
    """``validated`` versions had ``candidate``; each of them serves unless ``refused`` says why not."""
    problems = refused or {}
    return Facts({v: True for v in validated}, {v: problems.get(v) for v in validated})


def _settle(state: RolloutState, facts: Facts) -> plans.Plan:
    return outside.settle(state, facts, stamp="2025-01-01T00:00:00+00:00 by controller")


def test_a_validated_champion_set_in_mlflow_is_adopted_and_keeps_the_old_one_as_previous() -> None:
    state = _state({"champion": 3, "previous-champion": 2}, mlflow={"champion": 1, "previous-champion": 2})
    assert outside.versions_named(state) == {1}
    assert outside.to_serve(state, {1: True}) == {1}

    plan = _settle(state, _facts(1))

    assert plan.action == ADOPT and plan.outside and plan.version == 1
    assert plan.serve == plans.Serve({"champion": 1, "previous-champion": 3}, 0)
    assert plan.ops == (SetAlias("previous-champion", 3),)  # champion is already v1 in MLflow
    assert "champion v3 -> v1" in plan.summary and "v3 kept as previous-champion" in plan.summary
    assert plan.details["outside.by"] == outside.UNKNOWN_AUTHOR
    assert plan.details["outside.champion"].startswith("v3 -> v1: adopted")


def test_a_champion_that_never_passed_validation_is_put_back_and_never_loaded() -> None:
    state = _state({"champion": 3}, mlflow={"champion": 9})
    assert outside.to_serve(state, {9: False}) == set()  # nothing to load for a refused version

    plan = _settle(state, Facts({9: False}, {}))

    assert plan.action == REVERT
    assert plan.serve == plans.Serve({"champion": 3}, 0)
    assert plan.ops == (SetAlias("champion", 3),)
    assert plan.reason is not None and "v9 never passed validation" in plan.reason and "`candidate`" in plan.reason
    assert "put back champion to v3" in plan.summary


def test_a_champion_triton_cannot_serve_is_put_back_with_tritons_reason() -> None:
    state = _state({"champion": 3}, mlflow={"champion": 2})
    plan = _settle(state, _facts(2, refused={2: "Triton refused to load m-v2: SyntaxError"}))
    assert plan.action == REVERT and plan.ops == (SetAlias("champion", 3),)
    assert plan.reason == "v2 cannot be served, so it may not be champion: Triton refused to load m-v2: SyntaxError"


def test_the_champion_alias_removed_is_put_back() -> None:
    plan = _settle(_state({"champion": 3}, mlflow={}), Facts({}, {}))
    assert plan.action == REVERT and plan.ops == (SetAlias("champion", 3),)
    assert plan.reason is not None and "needs a champion" in plan.reason


def test_the_canary_made_champion_in_mlflow_is_a_promotion() -> None:
    # What a person does in the UI: put `champion` on the canary's version (MLflow moves the alias there).
    state = _state({"champion": 3, "canary": 4}, 50, mlflow={"champion": 4, "canary": 4})
    plan = _settle(state, _facts(4))
    assert plan.action == ADOPT
    assert plan.serve == plans.Serve({"champion": 4, "previous-champion": 3}, 0)
    assert set(plan.ops) == {SetAlias("previous-champion", 3), DropAlias("canary"), SetWeight(0)}
    assert "its rollout ends" in plan.summary


def test_a_whole_manual_promotion_at_once_is_one_adoption() -> None:
    state = _state({"champion": 3, "canary": 4}, 50, mlflow={"champion": 4}, tag="0")
    plan = _settle(state, _facts(4))
    assert plan.action == ADOPT and plan.serve == plans.Serve({"champion": 4, "previous-champion": 3}, 0)
    assert plan.ops == (SetAlias("previous-champion", 3),)
    assert plan.details["outside.canary"] == "v4 -> none: adopted"


def test_an_earlier_rules_consequence_wins_over_a_later_edit_and_says_so() -> None:
    # Champion moved and previous-champion edited at once: the replaced champion is kept as previous.
    state = _state({"champion": 3, "previous-champion": 2}, mlflow={"champion": 1, "previous-champion": 5})
    plan = _settle(state, _facts(1, 5))
    assert plan.action == REVERT  # part of the change did not stand
    assert plan.serve == plans.Serve({"champion": 1, "previous-champion": 3}, 0)
    assert plan.ops == (SetAlias("previous-champion", 3),)
    assert "v3, the champion v1 replaced, is kept as it" in (plan.reason or "")


def test_a_champion_moved_under_a_running_canary_restarts_it_from_0() -> None:
    state = _state({"champion": 3, "canary": 4}, 25, mlflow={"champion": 1, "canary": 4})
    plan = _settle(state, _facts(1))
    assert plan.serve == plans.Serve({"champion": 1, "canary": 4, "previous-champion": 3}, 0)
    assert SetWeight(0) in plan.ops and "starts again from 0%" in plan.summary


def test_the_canary_alias_removed_rolls_the_canary_back() -> None:
    plan = _settle(_state({"champion": 3, "canary": 4}, 25, mlflow={"champion": 3}), Facts({}, {}))
    assert plan.action == ADOPT and plan.serve == plans.Serve({"champion": 3}, 0)
    assert plan.ops[0] == SetWeight(0)
    (tag,) = [op for op in plan.ops if isinstance(op, TagVersion)]
    assert (tag.version, tag.key) == (4, ROLLED_BACK_TAG) and "removed in MLflow" in tag.value


def test_a_canary_set_in_mlflow_starts_at_0_and_takes_a_weight_set_with_it() -> None:
    state = _state({"champion": 3, "candidate": 5}, mlflow={"champion": 3, "candidate": 5, "canary": 5})
    plan = _settle(state, _facts(5))
    assert plan.action == ADOPT and plan.serve == plans.Serve({"champion": 3, "canary": 5}, 0)
    assert plan.ops == (DropAlias("candidate"),)  # as `promote --to canary` does
    both = _state({"champion": 3}, mlflow={"champion": 3, "canary": 5}, tag="20")
    assert _settle(both, _facts(5)).serve == plans.Serve({"champion": 3, "canary": 5}, 20)


def test_a_canary_replaced_in_mlflow_starts_again_and_the_old_one_leaves() -> None:
    state = _state({"champion": 3, "canary": 4}, 50, mlflow={"champion": 3, "canary": 6})
    plan = _settle(state, _facts(6))
    assert plan.serve == plans.Serve({"champion": 3, "canary": 6}, 0)
    assert plan.ops == (SetWeight(0),) and "v4 leaves the rollout" in plan.summary


@pytest.mark.parametrize(
    ("serving", "mlflow", "why"),
    [
        ({"champion": 3}, {"champion": 3, "canary": 3}, "v3 is the champion; the canary must be another version"),
        ({"champion": 3}, {"champion": 3, "canary": 8}, "v8 never passed validation"),
        ({"champion": 3}, {"champion": 3, "candidate": 8}, "v8 never passed validation"),
        ({"champion": 3}, {"champion": 3, "previous-champion": 8}, "v8 never passed validation"),
        ({"champion": 3}, {"champion": 3, "previous-champion": 3}, "v3 is the champion; previous-champion must be"),
    ],
)
def test_refused_alias_edits_are_put_back(serving: dict[str, int], mlflow: dict[str, int], why: str) -> None:
    plan = _settle(_state(serving, mlflow=mlflow), Facts({3: True, 8: False}, {3: None}))
    assert plan.action == REVERT and plan.serve == plans.Serve(serving, 0)
    assert why in (plan.reason or "")
    assert all(isinstance(op, DropAlias) for op in plan.ops) or plan.ops == (), plan.ops


def test_candidate_and_previous_champion_removed_in_mlflow_are_adopted() -> None:
    state = _state({"champion": 3, "candidate": 5, "previous-champion": 2}, mlflow={"champion": 3})
    plan = _settle(state, Facts({}, {}))
    assert plan.action == ADOPT and plan.serve == plans.Serve({"champion": 3}, 0) and plan.ops == ()


@pytest.mark.parametrize(
    ("serving", "tag", "adopted", "why"),
    [
        ({"champion": 3, "canary": 4}, "40", 40, None),
        ({"champion": 3, "canary": 4}, "abc", None, "'abc' is not a whole percent from 0 to 100"),
        ({"champion": 3, "canary": 4}, "150", None, "'150' is not a whole percent"),
        ({"champion": 3, "canary": 4}, None, None, "the weight tag was removed"),
        ({"champion": 3}, "30", None, "there is no canary to send traffic to"),
    ],
)
def test_the_weight_tag_edited_by_hand(
    serving: dict[str, int], tag: str | None, adopted: int | None, why: str | None
) -> None:
    state = _state(serving, 10 if "canary" in serving else 0, tag=tag)
    if tag is None:
        state = state.model_copy(update={"mlflow_weight": None})
    plan = _settle(state, Facts({}, {}))
    if adopted is not None:
        assert plan.action == ADOPT and plan.serve == plans.Serve(serving, adopted) and plan.ops == ()
    else:
        assert plan.action == REVERT and plan.serve == plans.Serve(serving, state.canary_weight)
        assert plan.ops == (SetWeight(state.canary_weight),) and why in (plan.reason or "")


def test_nothing_to_settle_and_versions_not_checked_are_told_apart() -> None:
    with pytest.raises(outside.NothingToSettleError):
        _settle(_state({"champion": 3}), Facts({}, {}))
    moved = _state({"champion": 3}, mlflow={"champion": 1})
    with pytest.raises(ConcurrentChangeError, match="MLflow moved again"):
        _settle(moved, Facts({2: True}, {2: None}))  # planned for v2; MLflow now names v1
    with pytest.raises(ConcurrentChangeError, match="not loaded first"):
        _settle(moved, Facts({1: True}, {}))  # validated, but nobody loaded it


def test_no_weight_tag_on_a_model_that_never_had_a_canary_is_no_change() -> None:
    state = _state({"candidate": 1}).model_copy(update={"mlflow_weight": None})
    assert state.outside_changes() == ()


def test_the_state_tag_round_trips_and_refuses_a_hand_edit() -> None:
    text = state_tag("m", {"canary": 4, "champion": 3}, 25, 12)
    assert parse_state_tag("m", text) == ({"canary": 4, "champion": 3}, 25, 12)
    edited = json.loads(text)
    edited["aliases"]["champion"] = 9
    with pytest.raises(ValueError, match="does not match its check"):
        parse_state_tag("m", json.dumps(edited))
    with pytest.raises(ValueError, match="does not match its check"):
        parse_state_tag("other-model", text)  # a tag copied from another model
    with pytest.raises(ValueError, match=f"{STATE_TAG} is not JSON"):
        parse_state_tag("m", "champion=9")


def test_a_plans_written_keys_and_what_serves_after_it() -> None:
    state = RolloutState(model="m", aliases={"champion": 1, "canary": 2, "staging": 5}, canary_weight=30, generation=4)
    plan = plans.promote_to_champion(state, 2)
    assert plan.keys() == {"weight", "previous-champion", "champion", "canary"}
    # Aliases other than the four rollout ones are not part of what serves.
    assert plans.served_after(state, plan) == plans.Serve({"champion": 2, "previous-champion": 1}, 0)
