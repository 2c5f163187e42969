"""What a client and an operator read when things fail: server errors without internal addresses, and
warnings aggregated per interval instead of one per request."""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
import pytest

from serving.gateway import chat
from serving.gateway.errors import UpstreamFailedError, UpstreamTimeoutError, UpstreamUnavailableError, error_response
from serving.gateway.lograte import RateLimitedLog
from tests.gateway.conftest import Harness, chat_body


@pytest.mark.parametrize(
    "message",
    [
        "Triton at http://127.0.0.1:8001 did not answer within 2 s",
        "Cannot connect to host triton:8001 ssl:default [Connection refused]",
        "Triton answered 500: failed to connect to 10.0.3.7:8001",
        "upstream [::1]:8001 closed the connection",
    ],
)
def test_a_server_error_never_shows_an_internal_address(message: str) -> None:
    for error in (UpstreamTimeoutError(message), UpstreamFailedError(message), UpstreamUnavailableError(message)):
        body = orjson.loads(error_response(error).body)["error"]["message"]
        assert not any(part in body for part in ("127.0.0.1", "triton:8001", "10.0.3.7", "::1")), body
        assert body  # still says what happened


def test_a_client_error_keeps_its_message_whole() -> None:
    from serving.gateway.errors import InvalidRequestError

    body = orjson.loads(error_response(InvalidRequestError("messages.0: see https://example.com:8443/doc")).body)
    assert body["error"]["message"] == "messages.0: see https://example.com:8443/doc"


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "storm-test"]


def test_a_warning_repeated_per_request_is_one_line_then_one_count_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()
    aggregated = RateLimitedLog(logging.getLogger("storm-test"), interval_s=10.0, clock=clock)
    caplog.set_level(logging.WARNING, logger="storm-test")

    def burst(count: int, seconds: float, key: str = "canary v2") -> None:
        for _ in range(count):
            aggregated.warning(key, "canary v%d failed (%s)", 2, "boom")
            clock.now += seconds / count

    burst(1000, 9.0)  # a storm: 1000 failures in 9 s
    assert _lines(caplog) == ["canary v2 failed (boom)"]  # the state change, at once
    burst(500, 5.0)
    assert _lines(caplog)[1:] == ["canary v2 failed (boom) (and 1099 more like it in the last 10 s)"]
    clock.now += 30.0
    aggregated.flush()  # the app's background task: the tail of the storm is counted too
    assert _lines(caplog)[2].startswith("canary v2 failed (boom) (and 400 more like it in the last")
    clock.now += 30.0
    aggregated.flush()  # quiet for a whole interval: the run is over
    burst(1, 0.1)
    assert _lines(caplog)[3:] == ["canary v2 failed (boom)"]  # a new run is logged at once again
    burst(1, 0.1, key="canary v3")
    assert _lines(caplog)[4:] == ["canary v2 failed (boom)"]  # another kind of warning has its own run


def test_a_canary_failing_every_request_does_not_log_a_line_per_request(
    harness: Callable[..., Harness], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The aggregation is per process, as the log is: start from a fresh one, not from earlier tests' runs.
    monkeypatch.setattr(chat, "_aggregated", RateLimitedLog(chat.log))
    h = harness(weight=100)
    h.upstream.fail["qwen3-vl-v2"] = UpstreamFailedError("Triton answered 500: the model failed")
    caplog.set_level(logging.WARNING, logger="serving.gateway.chat")

    answers = [h.client.post("/v1/chat/completions", json=chat_body()) for _ in range(200)]

    assert {a.status_code for a in answers} == {200}  # the champion answered every one
    lines = [r.getMessage() for r in caplog.records if r.name == "serving.gateway.chat"]
    assert 1 <= len(lines) <= 3, lines
    assert lines[0].startswith("canary v2 failed")
