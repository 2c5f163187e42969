"""A real Triton serving two versions of the tiny model (float and bitsandbytes int8) side by side."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from serving.triton.client import (
    ChatResult,
    InvalidRequestError,
    ModelNotFoundError,
    ModelNotReadyError,
    TritonChatClient,
    user_message,
)
from serving.triton.launcher import TritonServer, free_ports
from serving.triton.settings import TritonSettings
from tests.serving.conftest import GOLDEN_SEED, Packager
from tiny_model import shapes

pytestmark = pytest.mark.triton

MODEL = "qwen3-vl"
FLOAT, INT8 = 1, 2
MAX_HISTORY = 2
MAX_NEW_TOKENS = 8
# Colour and count questions: the tiny model answers these reliably; shape it still confuses.
GOLDEN = [shapes.sample(GOLDEN_SEED, i, category=c) for c in ("color", "count") for i in range(4)]


@pytest.fixture(scope="module")
def repository(
    tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, int8_checkpoint: Path, packager: Packager
) -> Path:
    root = tmp_path_factory.mktemp("triton-models")
    for version, checkpoint in ((FLOAT, tiny_checkpoint), (INT8, int8_checkpoint)):
        packager(checkpoint, root, version=version, max_history=MAX_HISTORY, max_new_tokens=MAX_NEW_TOKENS)
    return root


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    http, grpc, metrics = free_ports(3)
    settings = TritonSettings(http_port=http, grpc_port=grpc, metrics_port=metrics, exit_timeout_secs=1)
    run_dir = tmp_path_factory.mktemp("triton-run")
    with TritonServer(repository, settings, run_dir=run_dir, load_models=[MODEL]) as running:
        yield running


@pytest.fixture(scope="module")
def clients(server: TritonServer) -> Iterator[dict[str, TritonChatClient]]:
    with (
        TritonChatClient(server.http_url, MODEL, protocol="http", timeout_s=60) as http,
        TritonChatClient(server.grpc_url, MODEL, protocol="grpc", timeout_s=60) as grpc,
    ):
        yield {"http": http, "grpc": grpc}


@pytest.fixture()
def admin(server: TritonServer) -> Iterator[triton_http.InferenceServerClient]:
    client = triton_http.InferenceServerClient(server.http_url.removeprefix("http://"), network_timeout=120)
    yield client
    client.close()


def _ask(sample: shapes.Sample) -> list[dict[str, Any]]:
    return [user_message(sample.question, [sample.image])]


def _success_metric(server: TritonServer, version: int) -> int:
    text = httpx.get(server.metrics_url).text
    match = re.search(rf'^nv_inference_request_success{{model="{MODEL}",version="{version}"}} (\d+)', text, re.M)
    return int(match.group(1)) if match else 0


def _stats(admin: triton_http.InferenceServerClient, version: int) -> dict[str, int]:
    (stats,) = admin.get_inference_statistics(MODEL, str(version))["model_stats"]
    return {
        "success": int(stats["inference_stats"]["success"]["count"]),
        "inference_count": int(stats["inference_count"]),
        "execution_count": int(stats["execution_count"]),
    }


def _concurrently(calls: list[Callable[[], Any]], workers: int = 8) -> list[Any]:
    def outcome(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(outcome, calls))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("version", [FLOAT, INT8])
def test_answer_honours_the_contract(clients: dict[str, TritonChatClient], protocol: str, version: int) -> None:
    result = clients[protocol].chat(_ask(GOLDEN[0]), model_version=version)

    assert isinstance(result, ChatResult)
    assert result.model_version == str(version)
    # 16 image tokens plus the question and chat markup.
    assert result.prompt_tokens > 16
    assert 1 <= result.completion_tokens <= MAX_NEW_TOKENS
    assert result.latency_s > 0


@pytest.mark.parametrize("version", [FLOAT, INT8])
def test_golden_answers_over_http_and_grpc(clients: dict[str, TritonChatClient], version: int) -> None:
    for sample in GOLDEN:
        answers = {name: client.chat(_ask(sample), model_version=version).text for name, client in clients.items()}

        assert answers == {"http": sample.answer, "grpc": sample.answer}, sample.question


def test_metrics_and_statistics_count_requests_per_version(
    server: TritonServer, clients: dict[str, TritonChatClient], admin: triton_http.InferenceServerClient
) -> None:
    before = {v: (_success_metric(server, v), _stats(admin, v)["success"]) for v in (FLOAT, INT8)}

    for version, count in ((FLOAT, 3), (INT8, 2)):
        for _ in range(count):
            clients["http"].chat(_ask(GOLDEN[1]), model_version=version)

    after = {v: (_success_metric(server, v), _stats(admin, v)["success"]) for v in (FLOAT, INT8)}
    assert {v: (after[v][0] - before[v][0], after[v][1] - before[v][1]) for v in after} == {
        FLOAT: (3, 3),
        INT8: (2, 2),
    }


def test_dynamic_batching_batches_concurrent_requests(
    clients: dict[str, TritonChatClient], admin: triton_http.InferenceServerClient
) -> None:
    before = _stats(admin, FLOAT)

    results = _concurrently(
        [lambda s=sample: clients["http"].chat(_ask(s), model_version=FLOAT) for sample in GOLDEN * 4]
    )

    after = _stats(admin, FLOAT)
    assert all(isinstance(result, ChatResult) for result in results), results
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == len(GOLDEN) * 4
    assert executions < inferences


def test_batch_mixing_greedy_and_sampled_requests_keeps_greedy_answers(
    clients: dict[str, TritonChatClient],
) -> None:
    calls: list[Callable[[], ChatResult]] = []
    for sample in GOLDEN:
        calls.append(lambda s=sample: clients["grpc"].chat(_ask(s), model_version=FLOAT))
        calls.append(lambda s=sample: clients["grpc"].chat(_ask(s), model_version=FLOAT, temperature=1.5))

    results = _concurrently(calls)

    assert all(isinstance(result, ChatResult) for result in results), results
    assert [result.text for result in results[::2]] == [sample.answer for sample in GOLDEN]


def _raw_infer(server: TritonServer, inputs: list[dict[str, Any]], version: int = FLOAT) -> httpx.Response:
    return httpx.post(f"{server.http_url}/v2/models/{MODEL}/versions/{version}/infer", json={"inputs": inputs})


def _messages_input(document: str) -> dict[str, Any]:
    return {"name": "messages", "shape": [1, 1], "datatype": "BYTES", "data": [document]}


@pytest.mark.parametrize(
    ("inputs", "problem"),
    [
        ([_messages_input("not json")], "'messages' is not UTF-8 JSON"),
        (
            [
                _messages_input(
                    json.dumps(
                        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]
                    )
                )
            ],
            "base64 data URIs",
        ),
        (
            [
                _messages_input(json.dumps([{"role": "user", "content": "hi"}])),
                {"name": "max_tokens", "shape": [1, 1], "datatype": "INT32", "data": [999]},
            ],
            f"from 1 to {MAX_NEW_TOKENS}",
        ),
        ([{"name": "max_tokens", "shape": [1, 1], "datatype": "INT32", "data": [1]}], "messages"),
    ],
    ids=["not-json", "remote-image", "too-many-tokens", "no-messages"],
)
def test_malformed_request_gets_400_and_server_keeps_answering(
    server: TritonServer, clients: dict[str, TritonChatClient], inputs: list[dict[str, Any]], problem: str
) -> None:
    response = _raw_infer(server, inputs)

    assert response.status_code == 400
    assert problem in response.json()["error"]
    assert clients["http"].chat(_ask(GOLDEN[0]), model_version=FLOAT).model_version == str(FLOAT)


def test_bad_requests_in_a_batch_leave_the_others_answered(clients: dict[str, TritonChatClient]) -> None:
    bad = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]
    calls: list[Callable[[], ChatResult]] = []
    for sample in GOLDEN[:4]:
        calls.append(lambda s=sample: clients["grpc"].chat(_ask(s), model_version=FLOAT))
        calls.append(lambda: clients["grpc"].chat(bad, model_version=FLOAT))

    results = _concurrently(calls)

    assert all(isinstance(result, ChatResult) for result in results[::2]), results
    assert all(isinstance(result, InvalidRequestError) for result in results[1::2]), results
    assert "not a readable image" in str(results[1])


def test_history_beyond_the_limit_is_dropped_oldest_first(clients: dict[str, TritonChatClient]) -> None:
    system = {"role": "system", "content": "You are a helpful assistant."}
    # The old turns carry images (16 tokens each), the recent ones only text: what stays shows in the count.
    old = [[_ask(sample)[0], {"role": "assistant", "content": sample.answer}] for sample in GOLDEN[:3]]
    recent = [
        [{"role": "user", "content": s.question}, {"role": "assistant", "content": s.answer}] for s in GOLDEN[3:5]
    ]
    assert len(recent) == MAX_HISTORY

    def prompt_tokens(turns: list[list[dict[str, Any]]]) -> int:
        conversation = [system, *(message for turn in turns for message in turn), *_ask(GOLDEN[5])]
        return clients["http"].chat(conversation, model_version=FLOAT, max_tokens=1).prompt_tokens

    assert prompt_tokens(old + recent) == prompt_tokens(recent)
    assert prompt_tokens(recent[1:]) < prompt_tokens(recent)


def test_max_tokens_caps_the_completion(clients: dict[str, TritonChatClient]) -> None:
    result = clients["grpc"].chat(_ask(GOLDEN[0]), model_version=INT8, max_tokens=1)

    assert result.completion_tokens == 1


def test_unknown_version_is_a_domain_error(clients: dict[str, TritonChatClient]) -> None:
    for client in clients.values():
        with pytest.raises(ModelNotFoundError, match="version 9"):
            client.chat("hello", model_version=9)


def _drop_weights(version: Path) -> str:
    (version / "model.safetensors").unlink()
    return "no file named model.safetensors"


def _break_model_py(version: Path) -> str:
    (version / "model.py").write_text("def initialize(:\n")
    return "SyntaxError"


@pytest.mark.parametrize("breakage", [_drop_weights, _break_model_py], ids=["missing-weights", "bad-model-py"])
def test_broken_version_fails_to_load_while_the_others_serve(
    repository: Path,
    clients: dict[str, TritonChatClient],
    admin: triton_http.InferenceServerClient,
    breakage: Callable[[Path], str],
) -> None:
    broken = repository / MODEL / "3"
    shutil.copytree(repository / MODEL / str(FLOAT), broken)
    reason = breakage(broken)
    try:
        with pytest.raises(InferenceServerException, match=f"(?s)version 3 .*{reason}"):
            admin.load_model(MODEL)

        for version in (FLOAT, INT8):
            assert clients["http"].chat(_ask(GOLDEN[0]), model_version=version).model_version == str(version)
        with pytest.raises(ModelNotReadyError):
            clients["grpc"].chat(_ask(GOLDEN[0]), model_version=3)
    finally:
        # Triton keeps the failed version listed as UNAVAILABLE; the next load retries it afresh.
        shutil.rmtree(broken)
