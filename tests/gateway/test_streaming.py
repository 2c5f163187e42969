"""Streaming, the OpenAI parameters (each honoured or refused by name), LLM metrics and client disconnects,
over the fake upstream; disconnects through a real uvicorn server (the test client cannot hang up)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
import uvicorn
from openai import OpenAI

from core.contract import INPUTS
from serving.gateway import openai_schema as wire
from serving.gateway.app import create_app
from serving.gateway.errors import UpstreamFailedError
from serving.gateway.upstream import Sampling, generate_request
from serving.telemetry import parse_version_stats, quantile
from serving.triton.launcher import free_ports
from tests.gateway.conftest import Harness, chat_body, gateway_settings, wait_for
from tests.gateway.fakes import FakeRegistry, FakeUpstream

Build = Callable[..., Harness]
V1, V2 = "qwen3-vl-v1", "qwen3-vl-v2"
LONG = "one two three four five six seven eight"


def client(h: Harness) -> OpenAI:
    return OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=h.client, max_retries=0)


def messages() -> list[Any]:
    return chat_body()["messages"]  # type: ignore[no-any-return]


def metrics_text(h: Harness) -> str:
    return h.client.get("/metrics").text


# --- parameters: honoured ------------------------------------------------------------------------


def test_every_honoured_parameter_reaches_the_model(harness: Build) -> None:
    h = harness()
    client(h).chat.completions.create(
        model="qwen3-vl",
        messages=messages(),
        max_completion_tokens=4,
        temperature=0.7,
        top_p=0.9,
        seed=7,
        stop=["x", "yz"],
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        logit_bias={"5": -100, "17": 3},
        logprobs=True,
        top_logprobs=2,
        response_format={"type": "json_object"},
    )

    assert h.upstream.calls[-1].sampling == Sampling(
        max_tokens=4,
        temperature=0.7,
        top_p=0.9,
        seed=7,
        stop=("x", "yz"),
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        logit_bias={"5": -100.0, "17": 3.0},
        logprobs=True,
        top_logprobs=2,
        response_format={"type": "json_object"},
    )


def test_a_json_schema_goes_to_the_model_with_its_schema(harness: Build) -> None:
    h = harness()
    schema = {"type": "object", "properties": {"color": {"type": "string"}}, "required": ["color"]}
    client(h).chat.completions.create(
        model="qwen3-vl",
        messages=messages(),
        stop="x",
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}},
    )

    sampling = h.upstream.calls[-1].sampling
    assert sampling.response_format == {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    assert sampling.stop == ("x",)


def test_unset_parameters_get_the_versions_defaults_and_a_seed_of_their_own(harness: Build) -> None:
    h = harness()
    h.upstream.parameters[V1].update(TEMPERATURE="0.3", TOP_P="0.8")
    h.upstream.ready.discard(V1)
    wait_for(lambda: 1 not in h.app.state.reconciler.view.ready, what="v1 to drop out")
    h.upstream.ready.add(V1)
    wait_for(lambda: 1 in h.app.state.reconciler.view.ready, what="v1's config re-read")

    for _ in range(2):
        client(h).chat.completions.create(model="qwen3-vl", messages=messages())

    first, second = (call.sampling for call in h.upstream.calls[-2:])
    assert (first.temperature, first.top_p, first.max_tokens) == (0.3, 0.8, 8)
    assert isinstance(first.seed, int) and isinstance(second.seed, int) and first.seed != second.seed


def test_every_input_of_the_contract_is_sent_every_time() -> None:
    # Triton's dynamic batcher only batches requests carrying the same inputs: the gateway sends them all.
    plain = orjson.loads(generate_request(b"[]", Sampling(max_tokens=8, temperature=0.0, top_p=1.0, seed=1)))
    full = Sampling(8, 0.5, 0.9, 2, ("x",), 0.1, 0.2, {"3": 1.0}, True, 2, {"type": "json_object"})
    rich = orjson.loads(generate_request(b"[]", full))

    assert set(plain) == set(rich) == {spec.name for spec in INPUTS}
    assert {key: type(value) for key, value in plain.items()} == {key: type(value) for key, value in rich.items()}


def test_logprobs_come_back_in_openai_form(harness: Build) -> None:
    h = harness()
    completion = client(h).chat.completions.create(model="qwen3-vl", messages=messages(), logprobs=True)
    chunks = list(client(h).chat.completions.create(model="qwen3-vl", messages=messages(), logprobs=True, stream=True))
    without = client(h).chat.completions.create(model="qwen3-vl", messages=messages())

    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert [entry.token for entry in logprobs.content] == ["red", " from", f" {V1}"]
    assert all(entry.logprob == -0.5 for entry in logprobs.content)
    streamed = [
        entry.token
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for entry in c.choices[0].logprobs.content or []
    ]
    assert streamed == ["red", " from", f" {V1}"]
    assert without.choices[0].logprobs is None


def test_finish_reason_is_length_when_the_cap_cuts_the_answer(harness: Build) -> None:
    h = harness()
    chunks = list(client(h).chat.completions.create(model="qwen3-vl", messages=messages(), max_tokens=2, stream=True))

    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "red from"
    assert chunks[-1].choices[0].finish_reason == "length"


def test_a_developer_message_reaches_the_model_as_its_system_message(harness: Build) -> None:
    h = harness()
    conversation = [{"role": "developer", "content": "Answer in one word."}, *messages()]
    client(h).chat.completions.create(model="qwen3-vl", messages=conversation)  # type: ignore[arg-type]

    sent = orjson.loads(h.upstream.calls[-1].messages)
    assert sent[0] == {"role": "system", "content": "Answer in one word."}


# --- parameters: refused by name -----------------------------------------------------------------

FUNCTION = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("tools", [FUNCTION]),
        ("tool_choice", "auto"),
        ("parallel_tool_calls", True),
        ("functions", [FUNCTION["function"]]),
        ("function_call", "auto"),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("modalities", ["text", "audio"]),
        ("prediction", {"type": "content", "content": "red"}),
        ("reasoning_effort", "low"),
        ("verbosity", "low"),
        ("web_search_options", {}),
        ("metadata", {"team": "a"}),
        ("store", True),
        ("service_tier", "flex"),
        ("prompt_cache_key", "k"),
        ("safety_identifier", "s"),
    ],
)
def test_each_unsupported_parameter_is_refused_by_name(harness: Build, name: str, value: Any) -> None:
    h = harness()
    with pytest.raises(openai.BadRequestError) as raised:
        client(h).chat.completions.create(model="qwen3-vl", messages=messages(), extra_body={name: value})

    error = raised.value
    assert error.param == name
    assert f"'{name}' is not supported" in error.message and "Supported: model, messages" in error.message
    assert h.upstream.calls == []


@pytest.mark.parametrize(
    "extra",
    [
        {"n": 1},
        {"store": False},
        {"modalities": ["text"]},
        {"service_tier": "auto"},
        {"tool_choice": "none"},
        {"tools": []},
        {"metadata": None},
        {"stream_options": None},
        # null is "not set", as the official client types every optional field (wrappers send param=None).
        *({name: None} for name in ("n", "stream", *wire.UNSUPPORTED)),
    ],
)
def test_values_that_ask_for_nothing_missing_are_accepted(harness: Build, extra: dict[str, Any]) -> None:
    h = harness()
    response = h.client.post("/v1/chat/completions", json=chat_body(**extra))
    assert response.status_code == 200, response.text


def test_stream_options_without_a_stream_is_refused_as_openai_does(harness: Build) -> None:
    h = harness()
    with pytest.raises(openai.BadRequestError) as raised:
        client(h).chat.completions.create(model="qwen3-vl", messages=messages(), stream_options={"include_usage": True})
    assert raised.value.param == "stream_options"
    assert "only allowed when stream is enabled" in raised.value.message


def test_an_answer_replayed_as_the_client_returned_it_continues_the_conversation(harness: Build) -> None:
    h = harness()
    first = client(h).chat.completions.create(model="qwen3-vl", messages=messages())
    # model_dump() sends every field of the message, those it does not use at null.
    replayed = first.choices[0].message.model_dump()
    assert {"tool_calls", "function_call", "audio", "annotations", "refusal"} <= set(replayed)

    again = client(h).chat.completions.create(
        model="qwen3-vl", messages=[*messages(), replayed, {"role": "user", "content": "and the other one?"}]
    )

    assert again.choices[0].message.content
    sent = orjson.loads(h.upstream.calls[-1].messages)
    assert sent[-2] == {"role": "assistant", "content": first.choices[0].message.content}
    tool_call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    with pytest.raises(openai.BadRequestError) as raised:
        client(h).chat.completions.create(
            model="qwen3-vl",
            messages=[*messages(), {**replayed, "tool_calls": [tool_call]}, {"role": "user", "content": "so?"}],
        )
    assert raised.value.param == "messages.1.tool_calls"


# --- streaming and failures ----------------------------------------------------------------------


def test_a_canary_failure_before_the_first_piece_streams_the_champions_answer(harness: Build) -> None:
    h = harness(weight=100)
    h.upstream.fail[V2] = UpstreamFailedError("Triton answered 500: boom")

    raw = client(h).chat.completions.with_raw_response.create(model="qwen3-vl", messages=messages(), stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)

    assert (text, raw.headers["x-model-version"]) == (f"red from {V1}", "1")
    counted = parse_version_stats(metrics_text(h))
    assert (counted[2].requests, counted[2].errors) == (1, 1)
    assert 1 not in counted  # the champion's answer for it is a retry, outside the split: not judged
    assert "gateway_retries_total 1.0" in metrics_text(h)


def test_a_failure_after_the_first_piece_ends_the_stream_with_an_error_event(harness: Build) -> None:
    h = harness(weight=100)
    h.upstream.fail_after[V2] = (1, UpstreamFailedError("Triton answered 500: generation failed"))

    received: list[str] = []
    with pytest.raises(openai.APIError, match="generation failed"):
        for chunk in client(h).chat.completions.create(model="qwen3-vl", messages=messages(), stream=True):
            received.extend(choice.delta.content or "" for choice in chunk.choices)

    assert "".join(received) == "red"
    # It cannot move to the champion once the client has part of the canary's answer; it counts against it.
    assert h.upstream.calls_to(V1) == 0
    counted = parse_version_stats(metrics_text(h))
    assert (counted[2].requests, counted[2].errors) == (1, 1)
    assert "gateway_retries_total 0.0" in metrics_text(h)


def test_a_raw_stream_failing_mid_way_ends_with_openais_error_object(harness: Build) -> None:
    h = harness(weight=0)
    h.upstream.fail_after[V1] = (2, UpstreamFailedError("Triton answered 500: generation failed"))

    response = h.client.post("/v1/chat/completions", json=chat_body(stream=True))

    events = [event for event in response.text.split("\n\n") if event]
    assert response.status_code == 200
    assert events[-1] == "data: [DONE]"
    error = orjson.loads(events[-2].removeprefix("data: "))["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("server_error", "upstream_error")


def test_an_error_event_names_no_internal_address(harness: Build) -> None:
    h = harness(weight=0)
    failure = UpstreamFailedError("Triton at http://10.0.3.7:8000/v2 answered 500: generation failed")
    h.upstream.fail_after[V1] = (2, failure)

    response = h.client.post("/v1/chat/completions", json=chat_body(stream=True))

    error = orjson.loads(response.text.split("\n\n")[-3].removeprefix("data: "))["error"]
    assert "10.0.3.7" not in error["message"] and "generation failed" in error["message"], error


def test_a_non_streamed_answer_failing_mid_way_is_answered_by_the_champion(harness: Build) -> None:
    h = harness(weight=100)
    h.upstream.fail_after[V2] = (1, UpstreamFailedError("Triton answered 500: generation failed"))

    raw = client(h).chat.completions.with_raw_response.create(model="qwen3-vl", messages=messages())

    assert (raw.parse().choices[0].message.content, raw.headers["x-model-version"]) == (f"red from {V1}", "1")
    counted = parse_version_stats(metrics_text(h))
    assert counted[2].errors == 1 and 1 not in counted  # the champion's retry is not judged
    assert V2 in h.upstream.cancelled or V2 not in h.upstream.finished


def test_a_stream_past_the_upstream_timeout_ends_with_an_error_and_is_cancelled(harness: Build) -> None:
    h = harness(weight=0, upstream_timeout_s=0.5)
    h.upstream.answer = lambda model, messages: LONG
    h.upstream.piece_delay_s[V1] = 0.3

    response = h.client.post("/v1/chat/completions", json=chat_body(stream=True))

    error = orjson.loads([e for e in response.text.split("\n\n") if e][-2].removeprefix("data: "))["error"]
    assert error["code"] == "upstream_timeout"
    assert h.upstream.cancelled == [V1]
    text = metrics_text(h)
    assert 'gateway_upstream_cancellations_total{reason="timeout",version="1"} 1.0' in text
    assert parse_version_stats(text)[1].errors == 1


# --- LLM metrics ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_success_records_time_to_first_token_time_per_token_and_tokens(harness: Build, stream: bool) -> None:
    h = harness(weight=0)
    h.upstream.delay_s[V1] = 0.2
    h.upstream.piece_delay_s[V1] = 0.1

    response = h.client.post("/v1/chat/completions", json=chat_body(stream=stream))
    assert response.status_code == 200

    stats = parse_version_stats(metrics_text(h))[1]
    ttft, tpot = quantile(stats.histograms["ttft"], 0.5), quantile(stats.histograms["tpot"], 0.5)
    latency = quantile(stats.latency, 0.5)
    assert ttft is not None and tpot is not None and latency is not None
    # Half a bucket of slack each way (buckets are ~9% wide); the rest is the fake's own sleeps.
    assert 0.19 <= ttft < latency
    assert 0.09 <= tpot < 0.2
    assert latency >= 0.2 + 2 * 0.1 * 0.95
    text = metrics_text(h)
    assert 'gateway_completion_tokens_count{version="1"} 1.0' in text
    assert 'gateway_completion_tokens_sum{version="1"} 3.0' in text


def test_failures_record_no_token_timings(harness: Build) -> None:
    h = harness(weight=0)
    h.upstream.fail_after[V1] = (2, UpstreamFailedError("boom"))
    h.client.post("/v1/chat/completions", json=chat_body(stream=True))

    stats = parse_version_stats(metrics_text(h))[1]
    assert stats.errors == 1 and stats.histograms["ttft"].sum() == 0 and stats.histograms["tpot"].sum() == 0
    assert 'gateway_completion_tokens_count{version="1"}' not in metrics_text(h)


# --- client disconnects, through a real server ----------------------------------------------------


class Live:
    """The app over fakes behind a real uvicorn (in a thread), so a client can really hang up."""

    def __init__(self) -> None:
        (port,) = free_ports(1)
        self.upstream = FakeUpstream.serving(1, 2)
        self.upstream.answer = lambda model, messages: LONG
        self.upstream.piece_delay_s[V1] = 0.2
        app = create_app(
            gateway_settings(), registry=FakeRegistry({"champion": 1, "canary": 2}), upstream=self.upstream
        )
        config = uvicorn.Config(app, port=port, log_level="warning", lifespan="on", loop="asyncio")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> Live:
        self.thread.start()
        wait_for(lambda: _ready(self.url), what="the gateway to listen and see v1 ready")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics").text


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def live() -> Iterator[Live]:
    with Live() as running:
        yield running


def test_a_client_leaving_a_stream_cancels_its_request_and_counts_a_disconnect(live: Live) -> None:
    with httpx.stream("POST", f"{live.url}/v1/chat/completions", json=chat_body(stream=True), timeout=30) as response:
        events = response.iter_lines()
        received = [line for line in (next(events) for _ in range(4)) if line.startswith("data:")]
    assert received, "nothing streamed before the client left"

    wait_for(lambda: live.upstream.cancelled == [V1], what="the upstream stream to be closed")
    text = live.metrics()
    assert 'gateway_client_disconnects_total{version="1"} 1.0' in text
    assert 'gateway_upstream_cancellations_total{reason="disconnect",version="1"} 1.0' in text
    # Neither a success nor an error of the version.
    assert 1 not in parse_version_stats(text)
    assert live.upstream.finished == []


def test_a_client_leaving_before_its_answer_cancels_its_request_and_counts_a_disconnect(live: Live) -> None:
    live.upstream.delay_s[V1] = 5.0
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{live.url}/v1/chat/completions", json=chat_body(), timeout=0.5)

    wait_for(lambda: live.upstream.cancelled == [V1], what="the upstream request to be cancelled")
    assert time.monotonic() - started < 5.0, "the gateway waited for the answer nobody reads"
    text = live.metrics()
    assert 'gateway_client_disconnects_total{version="1"} 1.0' in text
    assert 'gateway_requests_total{code="499",route="/v1/chat/completions"} 1.0' in text
    assert 1 not in parse_version_stats(text)
