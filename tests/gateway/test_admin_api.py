"""The admin API over a fake registry that applies the registry's own plans: auth, actions, faults."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from serving.telemetry import LATENCY_BUCKETS, parse_version_stats
from tests.gateway.conftest import AUTH, TOKEN, Harness, chat_body, wait_for

Build = Callable[..., Harness]


def admin(h: Harness, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    return h.client.request(method, path, json=body, headers={**AUTH, **(headers or {})})


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-of-some-length"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": TOKEN},
    ],
)
@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/admin/state"), ("POST", "/admin/pause"), ("DELETE", "/admin/faults")]
)
def test_every_admin_route_needs_the_token(harness: Build, headers: dict[str, str], method: str, path: str) -> None:
    h = harness()
    response = h.client.request(method, path, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["type"] == "authentication_error"
    assert TOKEN not in response.text
    assert h.registry.events == []


def test_dev_mode_without_a_token_leaves_the_admin_api_open(harness: Build) -> None:
    h = harness(dev=True, admin_token=None)
    assert h.client.get("/admin/state").status_code == 200


def test_state(harness: Build) -> None:
    h = harness(weight=20)
    state = admin(h, "GET", "/admin/state").json()
    assert state["aliases"] == {"champion": 1, "canary": 2}
    assert (state["canary_weight"], state["ready_versions"], state["faults"]) == (20, [1, 2], [])


def test_a_rollout_through_the_admin_api(harness: Build) -> None:
    h = harness(aliases={"champion": 1, "candidate": 2})
    promoted = admin(h, "POST", "/admin/promote", {"to": "canary", "weight": 5, "reason": "drill"}, {"X-Actor": "ana"})
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["state"]["aliases"] == {"champion": 1, "canary": 2}
    assert promoted.json()["event"]["actor"] == "ana (gateway admin API)"
    assert h.registry.events[-1].reason == "drill"
    # This replica moved at once: its routing already uses the new split.
    assert h.app.state.reconciler.view.split.canary == 2

    assert admin(h, "POST", "/admin/step", {}).json()["state"]["canary_weight"] == 25
    assert admin(h, "POST", "/admin/step", {"steps": [30, 60]}).json()["state"]["canary_weight"] == 30
    assert admin(h, "POST", "/admin/weight", {"weight": 40, "version": 2}).json()["state"]["canary_weight"] == 40
    assert admin(h, "POST", "/admin/pause", {"reason": "investigating p95"}).json()["state"]["paused"] is True
    refused = admin(h, "POST", "/admin/step", {})
    assert refused.status_code == 409 and "paused" in refused.json()["error"]["message"]
    assert admin(h, "POST", "/admin/resume").json()["state"]["paused"] is False
    champion = admin(h, "POST", "/admin/promote", {"to": "champion", "version": 2})
    assert champion.json()["state"]["aliases"] == {"champion": 2, "previous-champion": 1}
    actions = [event.action for event in h.registry.events]
    assert actions == ["promote-canary", "step", "step", "set-weight", "pause", "resume", "promote-champion"]


def test_abort(harness: Build) -> None:
    h = harness(weight=50)
    aborted = admin(h, "POST", "/admin/abort", {"version": 2, "reason": "p95 regression"})
    assert aborted.status_code == 200
    assert aborted.json()["state"]["aliases"] == {"champion": 1}
    response = h.client.post("/v1/chat/completions", json=chat_body(), headers={"X-Session-Id": "any"})
    assert response.headers["x-model-version"] == "1"


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/admin/weight", {"weight": 101}, 400, "weight"),
        ("/admin/weight", {"weight": 10, "version": 7}, 409, "v7 is not the canary"),
        ("/admin/promote", {"to": "canary"}, 409, "no candidate"),
        ("/admin/promote", {"to": "production"}, 400, "to"),
        ("/admin/resume", None, 409, "not paused"),
        ("/admin/faults", {"version": 2, "error_percent": 150}, 400, "error_percent"),
        ("/admin/faults", {"version": 2, "typo": 1}, 400, "typo"),
    ],
)
def test_refusals_are_openai_errors(harness: Build, path: str, body: Any, status: int, words: str) -> None:
    h = harness(weight=10)
    response = admin(h, "POST", path, body)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"] or words == response.json()["error"]["param"]


def test_mlflow_down_is_503_with_retry_after(harness: Build) -> None:
    h = harness(weight=10)
    h.registry.down = True
    response = admin(h, "POST", "/admin/weight", {"weight": 20})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "registry_unavailable"


def test_injected_errors_on_the_canary_are_retried_and_counted_against_it(harness: Build) -> None:
    h = harness(weight=100)
    rules = admin(h, "POST", "/admin/faults", {"version": 2, "error_percent": 100}).json()
    assert rules == [{"version": 2, "delay_ms": 0.0, "error_percent": 100.0}]
    for _ in range(5):
        response = h.client.post("/v1/chat/completions", json=chat_body())
        assert (response.status_code, response.headers["x-model-version"]) == (200, "1")
    stats = parse_version_stats(h.client.get("/metrics").text)
    assert (stats[2].requests, stats[2].errors) == (5, 5)
    assert 1 not in stats  # the champion's answers for them were retries, outside the split: not judged
    assert h.upstream.calls_to("qwen3-vl-v2") == 0  # the fault stood in for Triton
    assert admin(h, "DELETE", "/admin/faults").json() == []
    assert h.client.post("/v1/chat/completions", json=chat_body()).headers["x-model-version"] == "2"


def test_an_injected_delay_slows_only_its_version(harness: Build) -> None:
    h = harness(weight=0)
    admin(h, "POST", "/admin/faults", {"version": 1, "delay_ms": 300})
    assert admin(h, "GET", "/admin/faults").json()[0]["delay_ms"] == 300
    h.client.post("/v1/chat/completions", json=chat_body())
    stats = parse_version_stats(h.client.get("/metrics").text)
    slowest_bucket_s = LATENCY_BUCKETS[int(np.flatnonzero(stats[1].latency)[-1])]
    assert stats[1].latency.sum() == 1 and 0.3 <= slowest_bucket_s < 0.4


def test_an_injected_delay_past_the_timeout_is_a_canary_timeout(harness: Build) -> None:
    h = harness(weight=100, upstream_timeout_s=0.2)
    admin(h, "POST", "/admin/faults", {"version": 2, "delay_ms": 1000})
    response = h.client.post("/v1/chat/completions", json=chat_body())
    assert (response.status_code, response.headers["x-model-version"]) == (200, "1")
    wait_for(lambda: "gateway_retries_total 1.0" in h.client.get("/metrics").text, what="the retry count")


def test_a_slow_canary_gets_the_champions_timeout_and_its_latency_is_judged(harness: Build) -> None:
    # One timeout for both: a canary cut sooner would turn slow answers into errors and hide its tail.
    h = harness(weight=100, upstream_timeout_s=5.0)
    admin(h, "POST", "/admin/faults", {"version": 2, "delay_ms": 600})

    response = h.client.post("/v1/chat/completions", json=chat_body())

    assert (response.status_code, response.headers["x-model-version"]) == (200, "2")
    stats = parse_version_stats(h.client.get("/metrics").text)
    assert (stats[2].requests, stats[2].errors) == (1, 0)
    slowest_bucket_s = LATENCY_BUCKETS[int(np.flatnonzero(stats[2].latency)[-1])]
    assert slowest_bucket_s >= 0.6
