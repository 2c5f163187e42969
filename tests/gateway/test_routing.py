"""Routing is pure: the weighted sticky split, pins, and what happens when a version is not ready."""

from __future__ import annotations

import random

import pytest

from serving.gateway.errors import InvalidRequestError, ModelNotFoundError, NoReadyVersionError
from serving.gateway.routing import Split, bucket, choose, parse_pin

CHAMPION, CANARY = 1, 2
SESSIONS = [f"session-{i}" for i in range(2000)]


def split(weight: int, ready: tuple[int, ...] = (CHAMPION, CANARY), canary: int | None = CANARY) -> Split:
    return Split(CHAMPION, canary, weight, frozenset(ready))


def on_canary(s: Split, sessions: list[str]) -> set[str]:
    return {key for key in sessions if choose(s, key=key, draw=0.0).version == CANARY}


def test_bucket_is_stable_and_spread_over_0_to_100() -> None:
    points = [bucket(key) for key in SESSIONS]
    assert points == [bucket(key) for key in SESSIONS]
    assert all(0.0 <= p < 100.0 for p in points)
    # Each decile holds about a tenth of the sessions.
    deciles = [sum(1 for p in points if 10 * d <= p < 10 * (d + 1)) for d in range(10)]
    assert all(150 <= count <= 250 for count in deciles), deciles


def test_2000_sessions_at_weight_20_put_17_to_23_percent_on_the_canary() -> None:
    share = len(on_canary(split(20), SESSIONS)) / len(SESSIONS)
    assert 0.17 <= share <= 0.23, share


def test_every_session_sticks_to_its_version() -> None:
    s = split(20)
    first = {key: choose(s, key=key, draw=0.0).version for key in SESSIONS}
    for _ in range(3):
        # The random draw must not matter once a session key is given.
        draws = {key: choose(s, key=key, draw=random.uniform(0, 100)).version for key in SESSIONS}
        assert draws == first


def test_growing_weight_keeps_canary_sessions_on_the_canary() -> None:
    previous: set[str] = set()
    for weight in (5, 25, 50, 100):
        current = on_canary(split(weight), SESSIONS)
        assert previous <= current, f"at {weight}% some canary sessions moved back to the champion"
        previous = current
    assert previous == set(SESSIONS)


def test_a_weight_that_does_not_shrink_moves_nobody() -> None:
    assert on_canary(split(30), SESSIONS) == on_canary(split(30), SESSIONS)
    champion_sessions = set(SESSIONS) - on_canary(split(30), SESSIONS)
    # Shrinking is the one move that may send canary sessions back; champion ones never move.
    assert not champion_sessions & on_canary(split(10), SESSIONS)


def test_without_a_session_key_each_request_draws() -> None:
    s = split(20)
    versions = [choose(s, key=None, draw=random.uniform(0, 100)).version for _ in range(4000)]
    assert 0.16 <= versions.count(CANARY) / len(versions) <= 0.24
    assert choose(s, key=None, draw=19.99).version == CANARY
    assert choose(s, key=None, draw=20.0).version == CHAMPION


def test_weight_0_and_100() -> None:
    assert on_canary(split(0), SESSIONS) == set()
    assert on_canary(split(100), SESSIONS) == set(SESSIONS)


def test_a_canary_request_falls_back_to_the_champion() -> None:
    route = choose(split(100), key="k", draw=0.0)
    assert (route.version, route.fallback, route.reason) == (CANARY, CHAMPION, "canary")
    assert choose(split(0), key="k", draw=0.0).fallback is None


def test_canary_not_ready_sends_its_share_to_the_champion() -> None:
    route = choose(split(100, ready=(CHAMPION,)), key="k", draw=0.0)
    assert (route.version, route.reason) == (CHAMPION, "canary-not-ready")


def test_champion_not_ready_is_503_not_a_silent_canary() -> None:
    with pytest.raises(NoReadyVersionError, match="champion v1 is not ready"):
        choose(split(0, ready=(CANARY,)), key="k", draw=0.0)
    # A request the weight sends to a ready canary still goes there, without a fallback.
    route = choose(split(100, ready=(CANARY,)), key="k", draw=0.0)
    assert (route.version, route.fallback) == (CANARY, None)


def test_no_champion_known() -> None:
    with pytest.raises(NoReadyVersionError, match="no champion"):
        choose(Split(None, None, 0, frozenset({1})), key=None, draw=0.0)


def test_no_canary_means_everything_on_the_champion() -> None:
    assert on_canary(split(50, canary=None), SESSIONS) == set()


def test_a_pin_routes_to_any_ready_version_without_fallback() -> None:
    route = choose(split(0, ready=(1, 2, 3)), key="k", draw=0.0, pinned=3)
    assert (route.version, route.fallback, route.reason) == (3, None, "pinned")


def test_a_pin_to_a_version_not_served_is_model_not_found() -> None:
    with pytest.raises(ModelNotFoundError, match=r"version 7 is not served \(served versions: 1, 2\)") as caught:
        choose(split(0), key=None, draw=0.0, pinned=7)
    assert caught.value.param == "X-Model-Version"


@pytest.mark.parametrize(("header", "expected"), [(None, None), ("", None), (" 3 ", 3), ("v12", 12)])
def test_parse_pin(header: str | None, expected: int | None) -> None:
    assert parse_pin(header) == expected


@pytest.mark.parametrize(
    "header",
    # Unicode digits: str.isdigit() takes each of them, int() refuses the superscript and reads the others.
    ["abc", "0", "-1", "1.5", "9999999999", "²", "v²", "1²", "٣", "１", "߁", "३"],
)
def test_parse_pin_refuses_what_is_not_a_version(header: str) -> None:
    with pytest.raises(InvalidRequestError, match="X-Model-Version"):
        parse_pin(header)
