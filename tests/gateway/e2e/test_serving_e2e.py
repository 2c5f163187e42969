"""The gateway in front of a real Triton and a real MLflow, driven by the official openai client and raw HTTP."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest
from openai import OpenAI

from serving.telemetry import parse_version_stats
from serving.triton.launcher import TritonServer
from serving.triton.repository import RepositoryControl
from tests.gateway.conftest import AUTH
from tests.gateway.e2e.conftest import MAX_NEW_TOKENS, Gateway, SetRollout
from tests.serving.conftest import GOLDEN_SEED
from tiny_model import shapes

pytestmark = [pytest.mark.triton, pytest.mark.mlflow, pytest.mark.slow]

# Colour and count questions: the tiny model answers these reliably.
GOLDEN = [shapes.sample(GOLDEN_SEED, i, category=c) for c in ("color", "count") for i in range(3)]


def image_part(image: Any) -> dict[str, Any]:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()},
    }


def ask(sample: shapes.Sample) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [image_part(sample.image), {"type": "text", "text": sample.question}]}]


def openai_client(gateway: Gateway) -> OpenAI:
    return OpenAI(base_url=f"{gateway.url}/v1", api_key="not-checked-by-the-gateway", max_retries=0, timeout=60)


def metrics(gateway: Gateway) -> dict[int, Any]:
    return parse_version_stats(httpx.get(f"{gateway.url}/metrics").text)


def test_the_official_client_answers_image_questions(gateway: Gateway, set_rollout: SetRollout) -> None:
    set_rollout({"champion": 1, "canary": 2}, weight=0)
    client = openai_client(gateway)
    for sample in GOLDEN:
        raw = client.chat.completions.with_raw_response.create(model="qwen3-vl", messages=ask(sample), temperature=0)
        completion = raw.parse()
        assert completion.choices[0].message.content == sample.answer, sample.question
        assert raw.headers["x-model-version"] == "1"
        assert completion.system_fingerprint == "v1"  # the version Triton says answered
        assert completion.model == "qwen3-vl"
        assert completion.usage is not None and completion.usage.prompt_tokens > 16


def test_the_official_client_streams(gateway: Gateway, set_rollout: SetRollout) -> None:
    set_rollout({"champion": 1, "canary": 2}, weight=100)
    sample = GOLDEN[0]
    stream = openai_client(gateway).chat.completions.create(
        model="qwen3-vl", messages=ask(sample), stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == sample.answer
    assert chunks[0].system_fingerprint == "v2"
    assert chunks[-1].usage is not None and 1 <= chunks[-1].usage.completion_tokens <= MAX_NEW_TOKENS


def test_weighted_sticky_split_over_real_versions(gateway: Gateway, set_rollout: SetRollout) -> None:
    set_rollout({"champion": 1, "canary": 2}, weight=30)
    body = {"model": "qwen3-vl", "messages": ask(GOLDEN[0]), "max_tokens": 2}
    seen: dict[str, set[str]] = {}
    with httpx.Client(base_url=gateway.url, timeout=60) as http:
        for _ in range(2):
            for i in range(40):
                response = http.post("/v1/chat/completions", json=body, headers={"X-Session-Id": f"user-{i}"})
                assert response.status_code == 200, response.text
                # The header and Triton's own model_version output agree.
                assert response.json()["system_fingerprint"] == "v" + response.headers["x-model-version"]
                seen.setdefault(f"user-{i}", set()).add(response.headers["x-model-version"])
    assert all(len(versions) == 1 for versions in seen.values()), seen
    on_canary = sum(1 for versions in seen.values() if versions == {"2"})
    assert 3 <= on_canary <= 22, on_canary  # 30% of 40 sessions, loosely


def test_pins_and_unknown_versions(gateway: Gateway, set_rollout: SetRollout) -> None:
    set_rollout({"champion": 1}, weight=0)
    body = {"model": "qwen3-vl", "messages": ask(GOLDEN[0])}
    with httpx.Client(base_url=gateway.url, timeout=60) as http:
        # v3 is loaded in Triton though it holds no alias: a pin may reach it.
        pinned = http.post("/v1/chat/completions", json=body, headers={"X-Model-Version": "3"})
        assert (pinned.status_code, pinned.headers["x-model-version"]) == (200, "3")
        missing = http.post("/v1/chat/completions", json=body, headers={"X-Model-Version": "42"})
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "model_not_found"
        models = http.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["qwen3-vl", "qwen3-vl-v1", "qwen3-vl-v2", "qwen3-vl-v3"]


def test_an_injected_canary_fault_is_answered_by_the_champion_and_counted(
    gateway: Gateway, set_rollout: SetRollout
) -> None:
    set_rollout({"champion": 1, "canary": 2}, weight=100)
    before = metrics(gateway)
    with httpx.Client(base_url=gateway.url, timeout=60) as http:
        assert http.post("/admin/faults", json={"version": 2, "error_percent": 100}, headers=AUTH).status_code == 200
        try:
            for sample in GOLDEN[:4]:
                response = http.post("/v1/chat/completions", json={"model": "qwen3-vl", "messages": ask(sample)})
                assert response.status_code == 200
                assert response.headers["x-model-version"] == "1"
                assert response.json()["choices"][0]["message"]["content"] == sample.answer
        finally:
            http.delete("/admin/faults", headers=AUTH)
    after = metrics(gateway)
    canary = after[2].minus(before[2])
    assert (canary.requests, canary.errors) == (4, 4)
    # The champion's answers for them were retries, outside the split: counted apart, never judged.
    champion = after.get(1, before.get(1)) if 1 in after else None
    assert champion is None or champion.minus(before.get(1, champion.__class__())).requests == 0
    retried = 'gateway_unjudged_requests_total{kind="retry",outcome="ok",version="1"}'
    assert any(line.startswith(retried) for line in httpx.get(f"{gateway.url}/metrics").text.splitlines())


def test_a_bad_image_fails_alone_and_does_not_poison_the_batch(gateway: Gateway, set_rollout: SetRollout) -> None:
    set_rollout({"champion": 1}, weight=0)
    good = [ask(sample) for sample in GOLDEN]
    buffer = io.BytesIO()
    GOLDEN[0].image.save(buffer, format="PNG")
    # A PNG whose header is fine (the gateway's check passes) but whose pixel data is cut off: the model refuses it.
    truncated = "data:image/png;base64," + base64.b64encode(buffer.getvalue()[:60]).decode()
    bad = [
        [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": truncated}}, {"type": "text", "text": "?"}],
            }
        ]
    ]

    def send(messages: list[dict[str, Any]]) -> httpx.Response:
        return httpx.post(
            f"{gateway.url}/v1/chat/completions", json={"model": "qwen3-vl", "messages": messages}, timeout=60
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(send, [*good, *bad * 3]))
    for sample, response in zip(GOLDEN, responses[: len(good)], strict=True):
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == sample.answer
    for response in responses[len(good) :]:
        assert response.status_code == 400, response.text
        assert "not a readable image" in response.json()["error"]["message"]


def test_a_canary_triton_unloads_is_routed_around(
    gateway: Gateway, triton: TritonServer, set_rollout: SetRollout
) -> None:
    set_rollout({"champion": 1, "canary": 2}, weight=100)
    with RepositoryControl(triton.http_url) as control:
        control.unload("qwen3-vl-v2")
        try:
            for sample in GOLDEN[:3]:
                response = httpx.post(
                    f"{gateway.url}/v1/chat/completions",
                    json={"model": "qwen3-vl", "messages": ask(sample)},
                    timeout=60,
                )
                assert (response.status_code, response.headers["x-model-version"]) == (200, "1")
            ready = httpx.get(f"{gateway.url}/readyz").json()
            assert ready["triton"]["ready"] == [1, 3]
        finally:
            control.load("qwen3-vl-v2")
    set_rollout({"champion": 1, "canary": 2}, weight=100)  # waits for v2 to be ready again
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions", json={"model": "qwen3-vl", "messages": ask(GOLDEN[0])}, timeout=60
    )
    assert response.headers["x-model-version"] == "2"


def test_client_errors_against_the_real_stack(gateway: Gateway, set_rollout: SetRollout) -> None:
    set_rollout({"champion": 1}, weight=0)
    tiny_bad = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with httpx.Client(base_url=gateway.url, timeout=60) as http:
        for content, status in (
            (b"{oops", 400),
            (orjson.dumps({"model": "qwen3-vl", "messages": [{"role": "user", "content": [tiny_bad]}]}), 400),
            (b'{"model": "qwen3-vl", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}', 400),
        ):
            response = http.post("/v1/chat/completions", content=content, headers={"Content-Type": "application/json"})
            assert response.status_code == status, response.text
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}
            assert response.headers["x-request-id"] and response.headers["x-model-version"] == "1"
        # The gateway is still fine.
        assert (
            http.post("/v1/chat/completions", json={"model": "qwen3-vl", "messages": ask(GOLDEN[0])}).status_code == 200
        )
