"""Reconciling from the registry and Triton, readiness, and shadow traffic, over fakes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest

from serving.gateway import shadow
from serving.gateway.errors import UpstreamFailedError, UpstreamTimeoutError
from serving.gateway.lograte import RateLimitedLog
from serving.gateway.reconcile import HISTORY_REREADS, VersionConfig
from serving.telemetry import parse_version_stats
from tests.gateway.conftest import AUTH, Harness, chat_body, wait_for

Build = Callable[..., Harness]


def view(h: Harness):  # type: ignore[no-untyped-def]
    return h.app.state.reconciler.view


def test_a_new_generation_moves_the_split(harness: Build) -> None:
    h = harness(weight=0)
    h.registry.set({"champion": 1, "canary": 2}, 100)
    wait_for(lambda: view(h).split.weight == 100, what="the new weight")
    assert h.client.post("/v1/chat/completions", json=chat_body()).headers["x-model-version"] == "2"


def polls(h: Harness, count: int) -> None:
    reads = h.registry.reads
    wait_for(lambda: h.registry.reads >= reads + count, what=f"{count} more polls")


def test_an_alias_or_weight_edited_in_mlflow_moves_no_traffic(harness: Build) -> None:
    h = harness(weight=0)
    state = h.registry.state
    assert state is not None
    # The MLflow UI moved the aliases and the weight tag; rollout.state (what serves) did not move.
    h.registry.state = state.model_copy(update={"mlflow_aliases": {"champion": 2}, "mlflow_weight": "100"})
    polls(h, 3)
    assert (view(h).split.champion, view(h).split.weight) == (1, 0)
    assert {h.client.post("/v1/chat/completions", json=chat_body()).headers["x-model-version"] for _ in range(5)} == {
        "1"
    }
    assert [c.key for c in view(h).state.outside_changes()] == ["champion", "canary", "weight"]


def test_the_view_only_moves_forward(harness: Build) -> None:
    h = harness(weight=0)
    h.registry.set({"champion": 1, "canary": 2}, 50)
    wait_for(lambda: view(h).split.weight == 50, what="the new generation")
    newest = h.registry.state
    assert newest is not None
    # A read from a replica or store that lags behind: an older generation is ignored.
    h.registry.state = newest.model_copy(update={"generation": newest.generation - 1, "canary_weight": 0})
    polls(h, 3)
    assert view(h).split.weight == 50
    # A split that changed without a new generation was not written by an action: ignored too.
    h.registry.state = newest.model_copy(update={"canary_weight": 100})
    polls(h, 3)
    assert view(h).split.weight == 50
    # Paused or an outside change on the same generation is news, not a new split: taken.
    h.registry.state = newest.model_copy(update={"paused": True})
    wait_for(lambda: view(h).state.paused, what="the paused flag")
    h.registry.state = newest.model_copy(update={"generation": newest.generation + 1, "canary_weight": 100})
    wait_for(lambda: view(h).split.weight == 100, what="the next generation")


def test_an_unreadable_state_tag_keeps_the_last_split(harness: Build) -> None:
    h = harness(weight=50)
    state = h.registry.state
    assert state is not None
    h.registry.state = state.model_copy(
        update={
            "generation": state.generation + 5,
            "aliases": {"champion": 9},
            "damaged": "rollout.state does not match its check (edited by hand?)",
        }
    )
    polls(h, 3)
    assert (view(h).split.champion, view(h).split.canary, view(h).split.weight) == (1, 2, 50)
    assert h.client.get("/readyz").status_code == 200


def test_a_new_champion_is_routed_to_as_soon_as_the_registry_names_it(harness: Build) -> None:
    # Triton's own poll is slow here: the registry poll asks Triton itself before it routes to a
    # version it has not seen ready (the controller loads a version before it names it).
    h = harness(weight=0, triton_poll_s=60)
    h.upstream.ready.add("qwen3-vl-v3")
    h.registry.set({"champion": 3}, 0)
    wait_for(lambda: view(h).split.champion == 3, what="the new champion")
    assert 3 in view(h).ready
    response = h.client.post("/v1/chat/completions", json=chat_body())
    assert (response.status_code, response.headers["x-model-version"]) == (200, "3")


def test_history_is_read_when_the_generation_moves_not_every_poll(harness: Build) -> None:
    h = harness(weight=0)
    calls: list[int] = []
    original = h.registry.history
    h.registry.history = lambda limit: calls.append(limit) or original(limit)  # type: ignore[method-assign]

    # The fake's generation has no recorded event: a few re-reads, then the gateway stops asking.
    polls(h, HISTORY_REREADS + 3)
    calls.clear()
    polls(h, 5)
    assert calls == []
    h.client.post("/admin/weight", json={"weight": 30}, headers=AUTH)
    assert view(h).history[0].summary == "canary v2 weight 0% -> 30%"
    assert 1 <= len(calls) <= 3
    calls.clear()
    polls(h, 5)
    assert calls == []  # the newest event matches the generation: nothing more to read


def test_mlflow_down_keeps_the_last_split_and_says_so(harness: Build) -> None:
    h = harness(weight=100)
    h.registry.down = True
    wait_for(lambda: not view(h).registry.reachable, what="the poll to notice MLflow is down")
    ready = h.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["registry"]["reachable"] is False
    assert ready.json()["registry"]["note"] == "MLflow is unreachable: serving the last known split"
    status = h.client.get("/status.json").json()
    assert status["registry"]["reachable"] is False and "connection refused" in status["registry"]["error"]
    assert h.client.post("/v1/chat/completions", json=chat_body()).headers["x-model-version"] == "2"
    # Back up, with a state that moved meanwhile: the gateway resumes from it.
    h.registry.set({"champion": 2}, 0)
    h.registry.down = False
    wait_for(lambda: view(h).registry.reachable and view(h).split.champion == 2, what="MLflow to be back")
    assert h.client.post("/v1/chat/completions", json=chat_body()).headers["x-model-version"] == "2"
    assert h.client.get("/readyz").json()["registry"] == {"reachable": True, "error": None}


def test_blocking_registry_calls_do_not_stall_requests(harness: Build) -> None:
    h = harness(weight=0)
    original = h.registry.read_state

    def slow():  # type: ignore[no-untyped-def]
        time.sleep(1.0)
        return original()

    h.registry.read_state = slow  # type: ignore[method-assign]
    time.sleep(0.1)  # a poll is now sleeping in its thread
    started = time.monotonic()
    for _ in range(5):
        assert h.client.post("/v1/chat/completions", json=chat_body()).status_code == 200
    assert time.monotonic() - started < 0.9


def test_a_slow_triton_poll_keeps_routing(harness: Build) -> None:
    h = harness(weight=100)

    async def slow() -> set[str]:
        raise UpstreamTimeoutError("Triton at http://127.0.0.1:9 did not answer within 5 s")

    h.upstream.ready_models = slow  # type: ignore[method-assign]
    wait_for(lambda: not view(h).triton.reachable, what="the poll to time out")
    # Triton holds its repository index while it loads a model: that is no reason to stop serving.
    assert set(view(h).ready) == {1, 2}
    assert h.client.post("/v1/chat/completions", json=chat_body()).headers["x-model-version"] == "2"
    assert h.client.get("/readyz").status_code == 200


def test_readiness_needs_a_known_ready_champion(harness: Build) -> None:
    h = harness(aliases={}, versions=(1,))
    detail = h.client.get("/readyz")
    assert detail.status_code == 503 and detail.json()["reason"] == "no champion known"
    h.registry.set({"champion": 3}, 0)
    wait_for(lambda: view(h).split.champion == 3, what="the champion")
    assert h.client.get("/readyz").json()["reason"] == "champion v3 is not READY in Triton"
    h.upstream.ready.add("qwen3-vl-v3")
    wait_for(lambda: h.client.get("/readyz").status_code == 200, what="readiness")
    assert h.client.get("/healthz").json() == {"status": "ok"}


def test_no_champion_is_503_with_retry_after(harness: Build) -> None:
    h = harness(aliases={}, versions=(1,))
    response = h.client.post("/v1/chat/completions", json=chat_body())
    assert (response.status_code, response.headers["retry-after"]) == (503, "1")
    assert response.headers["x-model-version"] == "none"


def shadow_harness(harness: Build, **settings: object) -> Harness:
    h = harness(aliases={"champion": 1, "candidate": 3}, versions=(1, 3), shadow_percent=100, **settings)
    return h


def shadow_counts(h: Harness) -> dict[str, float]:
    text = h.client.get("/metrics").text
    counts = {}
    for line in text.splitlines():
        if line.startswith(("gateway_shadow_requests_total{", "gateway_shadow_agreement_total{")):
            name, value = line.rsplit(" ", 1)
            counts[name] = float(value)
    return counts


def test_shadow_mirrors_to_the_candidate_and_measures_agreement(harness: Build) -> None:
    h = shadow_harness(harness)
    h.upstream.answer = lambda model, messages: "red" if b"color" in messages or model.endswith("v1") else "blue"
    for text in ("What color is it?", "Which colour?", "Name the color."):
        response = h.client.post("/v1/chat/completions", json=chat_body(text=text))
        assert response.headers["x-model-version"] == "1"
    wait_for(lambda: h.upstream.calls_to("qwen3-vl-v3") == 3, what="three mirrors")
    wait_for(lambda: shadow_counts(h).get('gateway_shadow_requests_total{outcome="ok",version="3"}') == 3)
    # "Which colour?" lacks the word the fake candidate needs: two of three agree.
    assert shadow_counts(h)['gateway_shadow_agreement_total{version="3"}'] == 2
    # The candidate's attempts are not live traffic: the controller's series do not count them.
    assert 3 not in parse_version_stats(h.client.get("/metrics").text)


def test_a_failing_slow_candidate_never_reaches_the_client(harness: Build) -> None:
    h = shadow_harness(harness)
    h.upstream.delay_s["qwen3-vl-v3"] = 1.0
    h.upstream.fail["qwen3-vl-v3"] = UpstreamFailedError("Triton answered 500: candidate broke")
    started = time.monotonic()
    for _ in range(3):
        response = h.client.post("/v1/chat/completions", json=chat_body())
        assert response.status_code == 200 and response.headers["x-model-version"] == "1"
    assert time.monotonic() - started < 0.9
    wait_for(lambda: shadow_counts(h).get('gateway_shadow_requests_total{outcome="error",version="3"}') == 3)


def test_a_candidate_failing_every_mirror_does_not_log_a_line_per_request(
    harness: Build, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The aggregation is per process, as the log is: start from a fresh one, not from earlier tests' runs.
    monkeypatch.setattr(shadow, "_aggregated", RateLimitedLog(shadow.log))
    h = shadow_harness(harness)
    h.upstream.fail["qwen3-vl-v3"] = UpstreamFailedError("Triton answered 500: candidate broke")
    caplog.set_level(logging.INFO, logger="serving.gateway.shadow")
    for _ in range(50):
        assert h.client.post("/v1/chat/completions", json=chat_body()).status_code == 200
    wait_for(lambda: shadow_counts(h).get('gateway_shadow_requests_total{outcome="error",version="3"}') == 50)
    lines = [r.getMessage() for r in caplog.records if r.name == "serving.gateway.shadow"]
    assert 1 <= len(lines) <= 3, lines
    assert lines[0].startswith("shadow request to v3 failed")


def test_shadow_is_off_by_default_and_skips_a_candidate_not_loaded(harness: Build) -> None:
    h = harness(aliases={"champion": 1, "candidate": 3}, versions=(1, 3))
    h.client.post("/v1/chat/completions", json=chat_body())
    h2 = harness(aliases={"champion": 1, "candidate": 3}, versions=(1,), shadow_percent=100)
    h2.client.post("/v1/chat/completions", json=chat_body())
    time.sleep(0.2)
    assert h.upstream.calls_to("qwen3-vl-v3") == 0 and h2.upstream.calls_to("qwen3-vl-v3") == 0


def test_status_json_matches_metrics(harness: Build) -> None:
    h = harness(weight=50)
    for i in range(20):
        h.client.post("/v1/chat/completions", json=chat_body(), headers={"X-Session-Id": f"s{i}"})
    h.upstream.fail["qwen3-vl-v2"] = UpstreamFailedError("boom")
    for i in range(20):
        h.client.post("/v1/chat/completions", json=chat_body(), headers={"X-Session-Id": f"s{i}"})
    stats = parse_version_stats(h.client.get("/metrics").text)
    status = h.client.get("/status.json").json()
    for row in status["versions"]:
        version = row["version"]
        assert row["total"]["requests"] == stats[version].requests
        assert row["total"]["errors"] == stats[version].errors
        assert row["window"]["requests"] == stats[version].requests  # the whole test fits in the window
    assert status["retries"] == stats[2].errors > 0
    assert (status["champion"], status["canary"], status["weight"]) == (1, 2, 50)


def test_a_versions_limits_are_read_from_ascii_digits_only() -> None:
    """config.pbtxt parameters are strings: "²" passes str.isdigit() and then int() fails."""
    parsed = VersionConfig.from_parameters({"MAX_IMAGES": "²", "MAX_IMAGE_PIXELS": "٣", "MAX_NEW_TOKENS": "16"})

    assert parsed == VersionConfig(max_images=None, max_image_pixels=None, max_new_tokens=16)
