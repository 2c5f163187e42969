"""Streaming and the OpenAI parameters end to end: the official openai client through a real nginx, the
gateway and a real Triton serving the tiny model (decoupled), each parameter's effect seen on real answers."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from serving.edge.launcher import Edge
from serving.edge.settings import EdgeSettings
from serving.triton.launcher import TritonServer, free_ports
from tests.gateway.conftest import wait_for
from tests.gateway.e2e.conftest import MAX_NEW_TOKENS, Gateway, SetRollout
from tests.gateway.e2e.test_serving_e2e import GOLDEN, ask

pytestmark = [pytest.mark.triton, pytest.mark.mlflow, pytest.mark.slow]

#: The tiny tokenizer's end-of-sequence tokens: banned, the model must use every token it may.
NO_END = {"392": -100, "0": -100}


@pytest.fixture(scope="module")
def edge(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    """nginx in front of the session's gateway, as clients reach it."""
    (port,) = free_ports(1)
    settings = EdgeSettings(port=port, upstreams=[gateway.url.removeprefix("http://")], rate_per_s=10_000, burst=1000)
    with Edge(settings, tmp_path_factory.mktemp("edge-streaming")) as running:
        yield running


@pytest.fixture
def champion_only(set_rollout: SetRollout) -> None:
    set_rollout({"champion": 1}, weight=0)


def via(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="not-checked", max_retries=0, timeout=60)


def create(client: OpenAI, **extra: Any) -> Any:
    return client.chat.completions.create(model="qwen3-vl", messages=ask(GOLDEN[0]), **extra)


def test_a_streamed_answer_arrives_in_pieces_through_nginx(edge: Edge, champion_only: None) -> None:
    # One answer first: a cold gateway or backend may take so long over its first request that the
    # whole answer is waiting in the socket when it gets to read it.
    create(via(edge.url), max_tokens=2)
    arrivals: list[float] = []
    chunks = []
    started = time.perf_counter()
    stream = create(
        via(edge.url),
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=MAX_NEW_TOKENS,
        temperature=1.0,
        seed=3,
        logit_bias=NO_END,
    )
    for chunk in stream:
        arrivals.append(time.perf_counter() - started)
        chunks.append(chunk)

    content = [i for i, c in enumerate(chunks) if c.choices and c.choices[0].delta.content]
    assert len(content) >= 5, [c.model_dump() for c in chunks]
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [i for i, c in enumerate(chunks) if c.choices and c.choices[0].finish_reason]
    assert finish == [len(chunks) - 2] and chunks[finish[0]].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == MAX_NEW_TOKENS
    # The first piece reached the client while the model was still generating the rest: a buffered
    # answer would arrive in one read, all its chunks within a millisecond.
    first, end = arrivals[content[0]], arrivals[finish[0]]
    assert end - first >= 0.02, (first, end)


def test_closing_a_stream_midway_cancels_the_request_in_triton(
    edge: Edge, gateway: Gateway, triton: TritonServer, champion_only: None
) -> None:
    before = _disconnects(gateway)
    stream = create(via(edge.url), stream=True, max_tokens=MAX_NEW_TOKENS, temperature=1.0, seed=4, logit_bias=NO_END)
    pieces = 0
    for chunk in stream:
        pieces += bool(chunk.choices and chunk.choices[0].delta.content)
        if pieces == 2:
            break
    stream.close()

    pattern = re.compile(rf"cancelled by its client after (\d+) of at most {MAX_NEW_TOKENS} tokens")
    found: list[int] = []

    def stopped() -> bool:
        found[:] = [int(m.group(1)) for m in pattern.finditer(Path(triton.log_path).read_text(errors="replace"))]
        return bool(found)

    wait_for(stopped, timeout_s=30, what="the backend to log the cancelled request")
    assert min(found) < MAX_NEW_TOKENS
    wait_for(lambda: _disconnects(gateway) == before + 1, timeout_s=30, what="the gateway to count the disconnect")


def _disconnects(gateway: Gateway) -> float:
    text = httpx.get(f"{gateway.url}/metrics").text
    match = re.search(r'^gateway_client_disconnects_total\{version="1"\} ([\d.]+)', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_the_same_seed_samples_the_same_answer(gateway: Gateway, champion_only: None) -> None:
    client = via(gateway.url)

    def answer(seed: int) -> str:
        return str(create(client, temperature=2.0, seed=seed, max_tokens=6).choices[0].message.content)

    first = answer(21)
    assert answer(21) == first
    assert len({answer(seed) for seed in range(22, 30)} | {first}) > 1, "temperature 2 never sampled differently"


def test_top_p_cuts_sampling_to_the_likeliest_token(gateway: Gateway, champion_only: None) -> None:
    client = via(gateway.url)
    greedy = create(client, temperature=0, max_tokens=6, logit_bias=NO_END).choices[0].message.content

    # At temperature 2 any token may come; with top_p that small only the likeliest one is left.
    cut = {
        create(client, temperature=2.0, top_p=0.01, seed=s, max_tokens=6, logit_bias=NO_END).choices[0].message.content
        for s in range(3)
    }

    assert cut == {greedy}


def test_a_stop_sequence_ends_the_answer_without_itself(gateway: Gateway, champion_only: None) -> None:
    sample = GOLDEN[0]
    stop = sample.answer[1:3]
    completion = create(via(gateway.url), temperature=0, stop=[stop])

    assert completion.choices[0].message.content == sample.answer.split(stop)[0]
    assert completion.choices[0].finish_reason == "stop"


def test_max_completion_tokens_and_finish_reasons(gateway: Gateway, champion_only: None) -> None:
    client = via(gateway.url)
    cut = create(client, max_completion_tokens=2, logit_bias=NO_END)
    ended = create(client, temperature=0)

    assert (cut.usage.completion_tokens, cut.choices[0].finish_reason) == (2, "length")
    # The tiny model's one-token answer, then its end: "stop", and the end is not a completion token.
    assert ended.choices[0].message.content == GOLDEN[0].answer
    assert (ended.usage.completion_tokens, ended.choices[0].finish_reason) == (1, "stop")


def test_logit_bias_moves_the_answer(gateway: Gateway, champion_only: None) -> None:
    client = via(gateway.url)
    plain = create(client, temperature=0, logprobs=True)
    token = plain.choices[0].logprobs.content[0]
    tokenizer_id = _token_id(token.token)

    banned = create(client, temperature=0, logit_bias={str(tokenizer_id): -100}).choices[0].message.content

    assert plain.choices[0].message.content == GOLDEN[0].answer
    assert not str(banned).startswith(token.token)


def _token_id(text: str) -> int:
    from transformers import AutoTokenizer

    from tiny_model import CHECKPOINT_DIR

    (token,) = AutoTokenizer.from_pretrained(CHECKPOINT_DIR)(text)["input_ids"]
    return int(token)


def test_penalties_push_the_answer_off_tokens_it_used(gateway: Gateway, champion_only: None) -> None:
    client = via(gateway.url)

    def tokens(**penalty: float) -> list[str]:
        completion = create(
            client, temperature=0, max_tokens=MAX_NEW_TOKENS, logit_bias=NO_END, logprobs=True, **penalty
        )
        return [entry.token for entry in completion.choices[0].logprobs.content]

    plain, frequency, presence = tokens(), tokens(frequency_penalty=2.0), tokens(presence_penalty=2.0)

    # Greedy and unpenalized, the tiny model repeats itself over a long answer; penalized, less so.
    assert len(set(plain)) < len(plain)
    assert len(set(frequency)) > len(set(plain))
    assert len(set(presence)) > len(set(plain))


def test_logprobs_and_top_logprobs_describe_the_answer(edge: Edge, champion_only: None) -> None:
    completion = create(via(edge.url), temperature=0, logprobs=True, top_logprobs=3, max_tokens=4, logit_bias=NO_END)

    entries = completion.choices[0].logprobs.content
    assert "".join(entry.token for entry in entries).strip() == completion.choices[0].message.content
    for entry in entries:
        assert entry.logprob <= 0 and bytes(entry.bytes or []) == entry.token.encode()
        assert len(entry.top_logprobs) == 3
        # Greedy: the chosen token is the likeliest, unless a banned end-of-sequence token was likelier.
        assert entry.top_logprobs[0].logprob >= entry.logprob


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_object"},
        {
            "type": "json_schema",
            "json_schema": {
                "name": "shape",
                "schema": {
                    "type": "object",
                    "properties": {"color": {"enum": ["red", "green", "blue"]}},
                    "required": ["color"],
                    "additionalProperties": False,
                },
            },
        },
    ],
    ids=["json_object", "json_schema"],
)
def test_json_mode_answers_json(gateway: Gateway, champion_only: None, response_format: dict[str, Any]) -> None:
    completion = create(via(gateway.url), temperature=0, response_format=response_format, max_tokens=MAX_NEW_TOKENS)

    content = str(completion.choices[0].message.content)
    assert content.startswith("{"), content
    if completion.choices[0].finish_reason == "stop":
        value = json.loads(content)
        assert isinstance(value, dict)
        if response_format["type"] == "json_schema":
            assert set(value) == {"color"} and value["color"] in ("red", "green", "blue")
    else:
        assert response_format["type"] == "json_object", f"the schema's answer fits in the tokens: {content!r}"


@pytest.mark.parametrize(
    ("extra", "param"), [({"n": 2}, "n"), ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools")]
)
def test_unsupported_requests_are_refused_by_name(
    edge: Edge, champion_only: None, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        create(via(edge.url), extra_body=extra)
    assert raised.value.param == param
