"""The OpenAI-compatible API over fakes: the official client, the error contract, retries, pins, stickiness."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from openai import BadRequestError as OpenAIBadRequest
from openai import NotFoundError, OpenAI

from serving.gateway.errors import (
    GatewayError,
    UpstreamFailedError,
    UpstreamNotReadyError,
    UpstreamOverloadedError,
    UpstreamRejectedError,
    UpstreamUnavailableError,
)
from serving.telemetry import parse_version_stats
from tests.gateway.conftest import Harness, chat_body, data_uri, noise_png, png, wait_for

Build = Callable[..., Harness]
V1, V2 = "qwen3-vl-v1", "qwen3-vl-v2"


def client(h: Harness) -> OpenAI:
    return OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=h.client, max_retries=0)


def image_message(text: str = "What color are the shapes?") -> list[Any]:
    parts = [{"type": "image_url", "image_url": {"url": data_uri(png())}}, {"type": "text", "text": text}]
    return [{"role": "user", "content": parts}]


def stats(h: Harness) -> dict[int, Any]:
    return parse_version_stats(h.client.get("/metrics").text)


def assert_openai_error(response: Any, status: int, param: str | None = None, words: str = "") -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert words in error["message"]
    assert "Traceback" not in response.text
    assert response.headers["x-request-id"]
    return dict(error)


def test_the_official_client_with_an_image(harness: Build) -> None:
    h = harness()
    raw = client(h).chat.completions.with_raw_response.create(
        model="qwen3-vl", messages=image_message(), max_tokens=5, temperature=0.0, top_p=1.0, user="alice"
    )
    completion = raw.parse()
    assert completion.model == "qwen3-vl"
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == f"red from {V1}"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 12 + 3
    assert raw.headers["x-model-version"] == "1"
    assert completion.id == f"chatcmpl-{raw.headers['x-request-id']}"
    call = h.upstream.calls[-1]
    assert (call.model, call.max_tokens, call.temperature, call.sampling.top_p) == (V1, 5, 0.0, 1.0)
    # The contract's `messages` tensor: role and content only, the data URI passed on untouched.
    assert orjson.loads(call.messages) == image_message()


def test_the_official_client_streaming(harness: Build) -> None:
    h = harness()
    stream = client(h).chat.completions.create(
        model="qwen3-vl", messages=image_message(), stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == f"red from {V1}"
    assert chunks[0].choices[0].delta.role == "assistant"
    # One chunk per piece Triton streamed, the finish on the last of them, the usage after it.
    assert [c.choices[0].delta.content for c in chunks[1:-1]] == ["red", " from", f" {V1}"]
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None, None, None, "stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert {c.id for c in chunks} == {chunks[0].id}


def test_a_raw_stream_ends_with_done(harness: Build) -> None:
    h = harness()
    response = h.client.post("/v1/chat/completions", json=chat_body(stream=True))
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-model-version"] == "1"
    events = [line for line in response.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    assert all(event.startswith("data: ") for event in events)
    # nginx passes the events on as they come instead of buffering the answer.
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["cache-control"] == "no-cache"


def test_max_tokens_is_capped_by_the_version_and_length_is_reported(harness: Build) -> None:
    h = harness()
    completion = client(h).chat.completions.create(model="qwen3-vl", messages=image_message(), max_tokens=1000)
    assert h.upstream.calls[-1].max_tokens == 8  # MAX_NEW_TOKENS of the served version
    assert completion.choices[0].finish_reason == "stop"
    short = client(h).chat.completions.create(model="qwen3-vl", messages=image_message(), max_completion_tokens=2)
    assert short.choices[0].finish_reason == "length"


def test_models_lists_the_registered_model_and_served_versions(harness: Build) -> None:
    h = harness()
    assert [m.id for m in client(h).models.list()] == ["qwen3-vl", V1, V2]


def test_a_model_is_retrieved_by_its_id_as_openai_does(harness: Build) -> None:
    h = harness()
    listed = {m.id: m for m in client(h).models.list()}

    for name in ("qwen3-vl", V2):
        assert client(h).models.retrieve(name) == listed[name]
    with pytest.raises(NotFoundError) as raised:
        client(h).models.retrieve("gpt-4o")
    assert raised.value.code == "model_not_found" and "'qwen3-vl-v2'" in raised.value.message
    # An id with a slash in it is a model this gateway lacks, not a missing route.
    error = assert_openai_error(h.client.get("/v1/models/org/qwen3-vl"), 404, "model", "does not exist here")
    assert error["code"] == "model_not_found"


def test_request_ids_are_echoed_when_sane(harness: Build) -> None:
    h = harness()
    assert h.client.get("/healthz", headers={"X-Request-Id": "trace-42"}).headers["x-request-id"] == "trace-42"
    replaced = h.client.get("/healthz", headers={"X-Request-Id": "bad id\twith tabs"}).headers["x-request-id"]
    assert replaced != "bad id\twith tabs" and len(replaced) == 32


@pytest.mark.parametrize(
    ("body", "status", "param", "words"),
    [
        (b"{not json", 400, None, "not valid JSON"),
        (b"[1, 2]", 400, None, "must be a JSON object"),
        ({"model": "qwen3-vl"}, 400, "messages", "Field required"),
        ({"model": "qwen3-vl", "messages": []}, 400, "messages", "at least 1 item"),
        (chat_body(temperature=3), 400, "temperature", "less than or equal to 2"),
        (chat_body(top_p=0), 400, "top_p", "greater than 0"),
        (chat_body(n=2), 400, "n", "less than or equal to 1"),
        (chat_body(top_logprobs=2), 400, "top_logprobs", "top_logprobs needs logprobs"),
        (chat_body(stop=["a", "b", "c", "d", "e"]), 400, "stop", "at most 4 items"),
        (chat_body(seed=2**63), 400, "seed", "less than 9223372036854775808"),
        (chat_body(presence_penalty=2.5), 400, "presence_penalty", "less than or equal to 2"),
        (chat_body(logit_bias={"red": 5}), 400, "logit_bias", "token ids"),
        (chat_body(logit_bias={"5": 101}), 400, "logit_bias.5", "less than or equal to 100"),
        (chat_body(response_format={"type": "yaml"}), 400, "response_format.type", "Input should be"),
        (chat_body(response_format={"type": "json_schema"}), 400, "response_format", "'json_schema' is required"),
        (chat_body(top_k=5), 400, "top_k", "Extra inputs are not permitted"),
        (
            {"model": "qwen3-vl", "messages": [{"role": "user", "content": "hi", "name": "bob"}]},
            400,
            "messages.0.name",
            "Extra inputs are not permitted",
        ),
        (chat_body(max_tokens=0), 400, "max_tokens", "greater than or equal to 1"),
        (
            {"model": "qwen3-vl", "messages": [{"role": "tool", "content": "x"}]},
            400,
            "messages.0.role",
            "Input should be",
        ),
        (
            {"model": "qwen3-vl", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            400,
            "messages.0.content.0",
            "tag 'input_audio'",
        ),
        ({"model": "qwen3-vl", "messages": [{"role": "assistant", "content": "hi"}]}, 400, "messages", "last message"),
        (chat_body(image="data:image/png;base64,!!!"), 400, "messages.0.content.0.image_url.url", "not valid base64"),
        (chat_body(image=data_uri(b"GIF89a but not really")), 400, "messages.0.content.0.image_url.url", "readable"),
        (chat_body(image="http://169.254.169.254/x.png"), 400, "messages.0.content.0.image_url.url", "refused"),
        ({**chat_body(), "model": "gpt-4o"}, 404, "model", "does not exist here"),
        ({**chat_body(), "model": "qwen3-vl-v9"}, 404, "X-Model-Version", "version 9 is not served"),
    ],
)
def test_client_errors_are_openai_errors_naming_the_field(
    harness: Build, body: Any, status: int, param: str | None, words: str
) -> None:
    h = harness()
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    response = h.client.post("/v1/chat/completions", content=content, headers={"Content-Type": "application/json"})
    assert_openai_error(response, status, param, words)
    assert "x-model-version" in response.headers
    assert h.upstream.calls == []


def test_the_official_client_sees_typed_errors(harness: Build) -> None:
    h = harness()
    with pytest.raises(NotFoundError):
        client(h).chat.completions.create(model="gpt-4o", messages=image_message())
    with pytest.raises(OpenAIBadRequest, match="temperature"):
        client(h).chat.completions.create(model="qwen3-vl", messages=image_message(), temperature=5)


def test_bodies_and_images_over_the_limits_are_413(harness: Build) -> None:
    h = harness(max_body_bytes=8192, max_image_bytes=2048)
    big = h.client.post("/v1/chat/completions", content=b" " * 9000, headers={"Content-Type": "application/json"})
    assert_openai_error(big, 413, None, "GATEWAY_MAX_BODY_BYTES")
    image = noise_png(30)
    assert 2048 < len(image) < 4000
    too_big = h.client.post("/v1/chat/completions", json=chat_body(image=data_uri(image)))
    assert_openai_error(too_big, 413, "messages.0.content.0.image_url.url", "GATEWAY_MAX_IMAGE_BYTES")
    assert h.upstream.calls == []


def test_an_image_over_the_versions_pixel_limit_is_413(harness: Build) -> None:
    h = harness()
    h.upstream.parameters[V1]["MAX_IMAGE_PIXELS"] = "1000"
    h.upstream.ready.discard(V1)
    wait_for(lambda: 1 not in h.app.state.reconciler.view.ready, what="v1 to drop out")
    h.upstream.ready.add(V1)
    wait_for(lambda: h.app.state.reconciler.view.ready.get(1, None) is not None, what="v1 config re-read")
    response = h.client.post("/v1/chat/completions", json=chat_body(image=data_uri(png())))
    assert_openai_error(response, 413, "messages.0.content.0.image_url.url", "at most 1000 pixels")


@pytest.mark.parametrize(
    "failure",
    [
        UpstreamFailedError("Triton answered 500: generation failed"),
        UpstreamUnavailableError("connection refused"),
        UpstreamNotReadyError("model is not at ready state"),
        UpstreamOverloadedError("Exceeds maximum queue size"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_canary_failure_is_answered_by_the_champion(harness: Build, failure: GatewayError) -> None:
    h = harness(weight=100)
    h.upstream.fail[V2] = failure
    response = h.client.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 200, response.text
    assert response.headers["x-model-version"] == "1"
    assert response.json()["choices"][0]["message"]["content"] == f"red from {V1}"
    counted = stats(h)
    assert (counted[2].requests, counted[2].errors) == (1, 1)
    assert 1 not in counted  # the champion's retry is not a request the split sent it: not judged
    assert 'gateway_unjudged_requests_total{kind="retry",outcome="ok",version="1"} 1.0' in h.client.get("/metrics").text
    assert "gateway_retries_total 1.0" in h.client.get("/metrics").text


def test_a_canary_timeout_is_answered_by_the_champion(harness: Build) -> None:
    h = harness(weight=100, upstream_timeout_s=0.2)
    h.upstream.delay_s[V2] = 2.0
    response = h.client.post("/v1/chat/completions", json=chat_body())
    assert (response.status_code, response.headers["x-model-version"]) == (200, "1")
    assert stats(h)[2].errors == 1


def test_a_not_ready_canary_is_routed_around_at_once(harness: Build) -> None:
    h = harness(weight=100, triton_poll_s=60)
    h.upstream.ready.discard(V2)  # Triton unloaded it; the next poll is a minute away
    first = h.client.post("/v1/chat/completions", json=chat_body())
    assert first.headers["x-model-version"] == "1"
    second = h.client.post("/v1/chat/completions", json=chat_body())
    assert second.headers["x-model-version"] == "1"
    assert h.upstream.calls_to(V2) == 1  # only the first request found out


def test_a_champion_failure_is_not_retried_on_the_canary(harness: Build) -> None:
    h = harness(weight=0)
    h.upstream.fail[V1] = UpstreamFailedError("Triton answered 500: boom")
    response = h.client.post("/v1/chat/completions", json=chat_body())
    assert_openai_error(response, 502, None, "boom")
    assert response.headers["x-model-version"] == "1"
    assert h.upstream.calls_to(V2) == 0
    assert stats(h)[1].errors == 1


def test_the_models_own_refusal_is_the_clients_400_and_not_retried(harness: Build) -> None:
    h = harness(weight=100)
    h.upstream.fail[V2] = UpstreamRejectedError("message 0: the last message must come from the user")
    response = h.client.post("/v1/chat/completions", json=chat_body())
    assert_openai_error(response, 400, None, "last message")
    assert response.headers["x-model-version"] == "2"
    assert h.upstream.calls_to(V1) == 0
    counted = stats(h)[2]
    assert (counted.requests, counted.errors) == (1, 0)


@pytest.mark.parametrize(
    ("failure", "status"),
    [(UpstreamOverloadedError("Exceeds maximum queue size"), 503), (UpstreamUnavailableError("refused"), 503)],
)
def test_overload_and_triton_down_are_503_with_retry_after(harness: Build, failure: GatewayError, status: int) -> None:
    h = harness(weight=0)
    h.upstream.fail[V1] = failure
    response = h.client.post("/v1/chat/completions", json=chat_body())
    assert_openai_error(response, status)
    assert response.headers["retry-after"] == "1"


def test_a_bad_request_is_a_400_even_while_triton_is_down(harness: Build) -> None:
    # A 503 would have the official client send it twice more; it can never succeed.
    h = harness()
    h.upstream.down = True
    wait_for(lambda: not h.app.state.reconciler.view.ready, what="the Triton poll to notice")

    response = h.client.post("/v1/chat/completions", json=chat_body(temperature=3))

    assert_openai_error(response, 400, "temperature", "less than or equal to 2")


def test_triton_down_for_good_is_503_without_touching_it(harness: Build) -> None:
    h = harness()
    h.upstream.down = True
    wait_for(lambda: not h.app.state.reconciler.view.ready, what="the Triton poll to notice")
    h.upstream.calls.clear()
    response = h.client.post("/v1/chat/completions", json=chat_body())
    error = assert_openai_error(response, 503, None, "the model server is unavailable")
    assert error["code"] == "upstream_unavailable"
    assert "127.0.0.1" not in error["message"] and "Triton" not in error["message"]  # nothing about the inside
    assert response.headers["retry-after"] == "1"
    assert h.client.get("/readyz").status_code == 503
    h.upstream.down = False
    wait_for(lambda: h.client.get("/readyz").status_code == 200, what="readiness after Triton returns")


def test_pins_by_header_and_by_model_name(harness: Build) -> None:
    h = harness(weight=0)
    by_header = h.client.post("/v1/chat/completions", json=chat_body(), headers={"X-Model-Version": "2"})
    assert by_header.headers["x-model-version"] == "2"
    by_model = h.client.post("/v1/chat/completions", json={**chat_body(), "model": V2})
    assert by_model.headers["x-model-version"] == "2"
    assert by_model.json()["model"] == "qwen3-vl"
    clash = h.client.post("/v1/chat/completions", json={**chat_body(), "model": V2}, headers={"X-Model-Version": "1"})
    assert_openai_error(clash, 400, "model", "different versions")
    bad = h.client.post("/v1/chat/completions", json=chat_body(), headers={"X-Model-Version": "latest"})
    assert_openai_error(bad, 400, "X-Model-Version")
    # Pinned requests are not the split's live traffic: the canary's verdict never counts them.
    assert 2 not in stats(h)
    pinned = 'gateway_unjudged_requests_total{kind="pinned",outcome="ok",version="2"} 2.0'
    assert pinned in h.client.get("/metrics").text


def test_a_pinned_failure_is_not_retried(harness: Build) -> None:
    h = harness(weight=0)
    h.upstream.fail[V2] = UpstreamFailedError("Triton answered 500: boom")
    response = h.client.post("/v1/chat/completions", json=chat_body(), headers={"X-Model-Version": "2"})
    assert response.status_code == 502 and h.upstream.calls_to(V1) == 0
    assert 2 not in stats(h)  # nor against the version it pinned


def test_sessions_stick_by_header_then_by_user(harness: Build) -> None:
    h = harness(weight=50)
    seen: dict[str, set[str]] = {}
    for _ in range(3):
        for i in range(40):
            header = h.client.post("/v1/chat/completions", json=chat_body(), headers={"X-Session-Id": f"s{i}"})
            user = h.client.post("/v1/chat/completions", json=chat_body(user=f"s{i}"))
            seen.setdefault(f"s{i}", set()).update({header.headers["x-model-version"], user.headers["x-model-version"]})
    assert all(len(versions) == 1 for versions in seen.values()), seen
    assert {v for versions in seen.values() for v in versions} == {"1", "2"}


def test_no_unhandled_error_leaks_a_traceback(harness: Build) -> None:
    h = harness()

    async def broken(*args: object) -> AsyncIterator[None]:
        raise RuntimeError("secret internals")
        yield  # an async generator, as Upstream.stream is

    h.upstream.stream = broken  # type: ignore[method-assign,assignment]
    response = h.client.post("/v1/chat/completions", json=chat_body())
    error = assert_openai_error(response, 500, None, "internal error; quote request id")
    assert response.headers["x-request-id"] in error["message"]
    assert "secret internals" not in response.text
    assert h.client.get("/healthz").status_code == 200


def test_every_answer_is_counted_by_route_and_code(harness: Build) -> None:
    h = harness()
    h.client.post("/v1/chat/completions", json=chat_body())
    h.client.post("/v1/chat/completions", content=b"{", headers={"Content-Type": "application/json"})
    h.client.get("/no/such/path")
    text = h.client.get("/metrics").text
    assert 'gateway_requests_total{code="200",route="/v1/chat/completions"} 1.0' in text
    assert 'gateway_requests_total{code="400",route="/v1/chat/completions"} 1.0' in text
    assert 'gateway_requests_total{code="404",route="unmatched"} 1.0' in text
