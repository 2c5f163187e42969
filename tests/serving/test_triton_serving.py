"""A real Triton serving two builds of the tiny model side by side, each its own Triton model with its
own config: ``qwen3-vl-v1`` (float) and ``qwen3-vl-v2`` (bitsandbytes int8)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from core.contract import CONFIG_FILE, render_config
from core.names import served_model_name
from serving.triton.client import (
    ChatResult,
    InvalidRequestError,
    ModelNotFoundError,
    ModelNotReadyError,
    OverloadedError,
    TritonChatClient,
    WireProtocol,
    user_message,
)
from serving.triton.launcher import TritonServer, free_ports
from serving.triton.settings import TritonSettings
from tests.serving.conftest import GOLDEN_SEED, MODEL, Packager, png_bytes, png_declaring, serving_params
from tiny_model import shapes

pytestmark = pytest.mark.triton

FLOAT, INT8 = 1, 2
NAMES = {version: served_model_name(MODEL, version) for version in (FLOAT, INT8)}
MAX_HISTORY = 2
# Each build has its own config; they differ here so a test can tell them apart.
MAX_NEW_TOKENS = {FLOAT: 8, INT8: 6}
# Colour and count questions: the tiny model answers these reliably; shape it still confuses.
GOLDEN = [shapes.sample(GOLDEN_SEED, i, category=c) for c in ("color", "count") for i in range(4)]

# Overload: a stand-in that holds its only instance for a while, behind the queue policy core.contract
# renders (here one waiting request at most, and half a second of waiting).
SLOW = "slow-v1"
SLOW_S = 3.0
SLOW_MODEL = f"""
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep({SLOW_S})
        outputs = {{
            "text": b"done", "prompt_tokens": 1, "completion_tokens": 1, "model_version": b"1",
            "finish_reason": b"stop", "token_logprobs": b"",
        }}
        for request in requests:
            response = pb_utils.InferenceResponse(
                [pb_utils.Tensor(name, np.array([[value]], dtype=np.object_ if isinstance(value, bytes) else np.int32))
                 for name, value in outputs.items()]
            )
            request.get_response_sender().send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""


@pytest.fixture(scope="module")
def repository(
    tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, int8_checkpoint: Path, packager: Packager
) -> Path:
    root = tmp_path_factory.mktemp("triton-models")
    for version, checkpoint in ((FLOAT, tiny_checkpoint), (INT8, int8_checkpoint)):
        packager(checkpoint, root, version=version, max_history=MAX_HISTORY, max_new_tokens=MAX_NEW_TOKENS[version])
    slow = root / SLOW
    (slow / "1").mkdir(parents=True)
    (slow / "1" / "model.py").write_text(SLOW_MODEL)
    policy = serving_params(max_batch_size=1, preferred_batch_sizes=[1], max_queue_size=1, queue_timeout_us=500_000)
    (slow / CONFIG_FILE).write_text(render_config(SLOW, 1, policy, warmup=False))
    return root


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    http, grpc, metrics = free_ports(3)
    settings = TritonSettings(http_port=http, grpc_port=grpc, metrics_port=metrics, exit_timeout_secs=1)
    run_dir = tmp_path_factory.mktemp("triton-run")
    with TritonServer(repository, settings, run_dir=run_dir, load_models=[*NAMES.values(), SLOW]) as running:
        yield running


Clients = Callable[[WireProtocol, int], TritonChatClient]


@pytest.fixture(scope="module")
def client(server: TritonServer) -> Iterator[Clients]:
    """``client(protocol, version)``: a chat client of the Triton model serving that build."""
    opened: dict[tuple[WireProtocol, int], TritonChatClient] = {}

    def get(protocol: WireProtocol, version: int) -> TritonChatClient:
        if (protocol, version) not in opened:
            url = server.http_url if protocol == "http" else server.grpc_url
            opened[protocol, version] = TritonChatClient(
                url, served_model_name(MODEL, version), protocol=protocol, timeout_s=60
            )
        return opened[protocol, version]

    yield get
    for chat in opened.values():
        chat.close()


@pytest.fixture()
def admin(server: TritonServer) -> Iterator[triton_http.InferenceServerClient]:
    client = triton_http.InferenceServerClient(server.http_url.removeprefix("http://"), network_timeout=120)
    yield client
    client.close()


def _ask(sample: shapes.Sample) -> list[dict[str, Any]]:
    return [user_message(sample.question, [sample.image])]


def _success_metric(server: TritonServer, model: str) -> int:
    text = httpx.get(server.metrics_url).text
    match = re.search(rf'^nv_inference_request_success{{model="{model}",version="\d+"}} (\d+)', text, re.M)
    return int(match.group(1)) if match else 0


def _stats(admin: triton_http.InferenceServerClient, model: str) -> dict[str, int]:
    (stats,) = admin.get_inference_statistics(model)["model_stats"]
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
def test_answer_honours_the_contract(client: Clients, protocol: WireProtocol, version: int) -> None:
    result = client(protocol, version).chat(_ask(GOLDEN[0]))

    assert isinstance(result, ChatResult)
    assert result.model_version == str(version)
    # 16 image tokens plus the question and chat markup.
    assert result.prompt_tokens > 16
    assert 1 <= result.completion_tokens <= MAX_NEW_TOKENS[version]
    assert result.latency_s > 0


@pytest.mark.parametrize("version", [FLOAT, INT8])
def test_golden_answers_over_http_and_grpc(client: Clients, version: int) -> None:
    for sample in GOLDEN:
        answers = {protocol: client(protocol, version).chat(_ask(sample)).text for protocol in ("http", "grpc")}

        assert answers == {"http": sample.answer, "grpc": sample.answer}, sample.question


def test_metrics_and_statistics_count_requests_per_model(
    server: TritonServer, client: Clients, admin: triton_http.InferenceServerClient
) -> None:
    def counts() -> dict[int, tuple[int, int]]:
        return {v: (_success_metric(server, NAMES[v]), _stats(admin, NAMES[v])["success"]) for v in NAMES}

    before = counts()
    for version, count in ((FLOAT, 3), (INT8, 2)):
        for _ in range(count):
            client("http", version).chat(_ask(GOLDEN[1]))
    after = counts()

    assert {v: (after[v][0] - before[v][0], after[v][1] - before[v][1]) for v in after} == {
        FLOAT: (3, 3),
        INT8: (2, 2),
    }


def test_dynamic_batching_batches_concurrent_requests(
    client: Clients, admin: triton_http.InferenceServerClient
) -> None:
    before = _stats(admin, NAMES[FLOAT])

    results = _concurrently([lambda s=sample: client("http", FLOAT).chat(_ask(s)) for sample in GOLDEN * 4])

    after = _stats(admin, NAMES[FLOAT])
    assert all(isinstance(result, ChatResult) for result in results), results
    assert [result.text for result in results] == [sample.answer for sample in GOLDEN * 4]
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == len(GOLDEN) * 4
    assert executions < inferences


def test_batch_mixing_greedy_and_sampled_requests_keeps_greedy_answers(client: Clients) -> None:
    calls: list[Callable[[], ChatResult]] = []
    for sample in GOLDEN:
        calls.append(lambda s=sample: client("grpc", FLOAT).chat(_ask(s)))
        calls.append(lambda s=sample: client("grpc", FLOAT).chat(_ask(s), temperature=1.5))

    results = _concurrently(calls)

    assert all(isinstance(result, ChatResult) for result in results), results
    assert [result.text for result in results[::2]] == [sample.answer for sample in GOLDEN]


def _generate_stream(server: TritonServer, inputs: dict[str, Any], model: str = NAMES[FLOAT]) -> httpx.Response:
    """Triton's ``generate_stream`` endpoint (inputs by name); the response read whole."""
    return httpx.post(f"{server.http_url}/v2/models/{model}/generate_stream", json=inputs, timeout=60)


def _events(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]


def _messages_input(messages: list[dict[str, Any]] | str) -> dict[str, Any]:
    return {"messages": messages if isinstance(messages, str) else json.dumps(messages)}


def _image_part(data: bytes) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{base64.b64encode(data).decode()}"}}


def _user(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [*parts, {"type": "text", "text": "What color are the shapes?"}]}]


_PNG = png_bytes(GOLDEN[0].image)


@pytest.mark.parametrize(
    ("inputs", "problem"),
    [
        (_messages_input("not json"), "'messages' is not UTF-8 JSON"),
        (
            _messages_input([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x"}}]}]),
            "base64 data URIs",
        ),
        (
            {**_messages_input([{"role": "user", "content": "hi"}]), "max_tokens": 999},
            f"from 1 to MAX_NEW_TOKENS={MAX_NEW_TOKENS[FLOAT]}, got 999",
        ),
        ({"max_tokens": 1}, "messages"),
        (_messages_input(_user(*[_image_part(_PNG)] * 5)), "holds 5 images .* over MAX_IMAGES=4"),
        # 20000 x 20000 pixels declared by a file of a few kB: refused from its header, never decoded.
        (_messages_input(_user(_image_part(png_declaring(20000, 20000)))), "over MAX_IMAGE_PIXELS=1048576"),
        (_messages_input(_user(_image_part(png_declaring(1500, 1000)))), "1500x1000 .* over MAX_IMAGE_PIXELS"),
        (_messages_input([{"role": "user", "content": "tell me " * 2000}]), "over MAX_PROMPT_TOKENS=4096"),
        ({**_messages_input("[]"), "response_format": '{"type": "yaml"}'}, "'response_format' type must be"),
    ],
    ids=[
        "not-json",
        "remote-image",
        "too-many-tokens",
        "no-messages",
        "too-many-images",
        "decompression-bomb",
        "too-many-pixels",
        "prompt-too-long",
        "bad-response-format",
    ],
)
def test_malformed_request_gets_400_and_server_keeps_answering(
    server: TritonServer, client: Clients, inputs: dict[str, Any], problem: str
) -> None:
    response = _generate_stream(server, inputs)

    assert response.status_code == 400, response.text
    (event,) = _events(response)
    assert re.search(problem, event["error"]), event["error"]
    assert client("http", FLOAT).chat(_ask(GOLDEN[0])).text == GOLDEN[0].answer


def test_the_answer_streams_piece_by_piece(server: TritonServer) -> None:
    """Triton's own SSE endpoint: one event per piece as the model produces it, the last with the finish."""
    # End-of-sequence banned: the model has to use every token it may, one response each.
    banned = json.dumps({"392": -100, "0": -100})
    inputs = {**_messages_input(_ask(GOLDEN[0])), "temperature": 1.0, "seed": 5, "logit_bias": banned}
    arrivals: list[float] = []
    events: list[dict[str, Any]] = []
    started = time.perf_counter()
    url = f"{server.http_url}/v2/models/{NAMES[FLOAT]}/generate_stream"
    with httpx.stream("POST", url, json=inputs, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:"):
                arrivals.append(time.perf_counter() - started)
                events.append(json.loads(line[5:]))

    assert len(events) >= 3, events
    assert [event["finish_reason"] for event in events] == [""] * (len(events) - 1) + ["length"]
    assert events[-1]["completion_tokens"] == MAX_NEW_TOKENS[FLOAT]
    counts = [event["completion_tokens"] for event in events]
    assert counts == sorted(counts) and counts[0] < counts[-1]
    # The first piece arrived while the later tokens were still being generated.
    assert arrivals[0] < arrivals[-1]


def test_the_same_seed_samples_the_same_answer(client: Clients, server: TritonServer) -> None:
    def sampled(seed: int) -> str:
        inputs = {**_messages_input(_ask(GOLDEN[0])), "temperature": 2.0, "seed": seed}
        return "".join(event["text"] for event in _events(_generate_stream(server, inputs)))

    first = sampled(11)

    assert sampled(11) == first
    assert len({sampled(seed) for seed in range(12, 20)} | {first}) > 1, "sampling at temperature 2 never varied"


def test_bad_requests_in_a_batch_leave_the_others_answered(client: Clients) -> None:
    bad = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]
    calls: list[Callable[[], ChatResult]] = []
    for sample in GOLDEN[:4]:
        calls.append(lambda s=sample: client("grpc", FLOAT).chat(_ask(s)))
        calls.append(lambda: client("grpc", FLOAT).chat(bad))

    results = _concurrently(calls)

    assert [result.text for result in results[::2]] == [sample.answer for sample in GOLDEN[:4]], results
    assert all(isinstance(result, InvalidRequestError) for result in results[1::2]), results
    assert "not a readable image" in str(results[1])


def test_history_beyond_the_limit_is_dropped_oldest_first(client: Clients) -> None:
    system = {"role": "system", "content": "You are a helpful assistant."}
    # The old turns carry images (16 tokens each), the recent ones only text: what stays shows in the count.
    old = [[_ask(sample)[0], {"role": "assistant", "content": sample.answer}] for sample in GOLDEN[:3]]
    recent = [
        [{"role": "user", "content": s.question}, {"role": "assistant", "content": s.answer}] for s in GOLDEN[3:5]
    ]
    assert len(recent) == MAX_HISTORY

    def prompt_tokens(turns: list[list[dict[str, Any]]]) -> int:
        conversation = [system, *(message for turn in turns for message in turn), *_ask(GOLDEN[5])]
        return client("http", FLOAT).chat(conversation, max_tokens=1).prompt_tokens

    assert prompt_tokens(old + recent) == prompt_tokens(recent)
    assert prompt_tokens(recent[1:]) < prompt_tokens(recent)


def test_max_tokens_caps_the_completion(client: Clients) -> None:
    result = client("grpc", INT8).chat(_ask(GOLDEN[0]), max_tokens=1)

    assert result.completion_tokens == 1
    assert result.finish_reason == "length"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_answer_that_ends_by_itself_says_stop(client: Clients, protocol: WireProtocol) -> None:
    result = client(protocol, FLOAT).chat(_ask(GOLDEN[0]))

    assert result.text == GOLDEN[0].answer
    assert result.finish_reason == "stop"
    # The end-of-sequence token is not a completion token.
    assert result.completion_tokens < MAX_NEW_TOKENS[FLOAT]
    assert 0 < result.first_token_s <= result.latency_s


def test_each_build_enforces_its_own_config(client: Clients) -> None:
    asked = MAX_NEW_TOKENS[INT8] + 1

    assert client("http", FLOAT).chat(_ask(GOLDEN[0]), max_tokens=asked).model_version == str(FLOAT)
    with pytest.raises(InvalidRequestError, match=f"MAX_NEW_TOKENS={MAX_NEW_TOKENS[INT8]}, got {asked}"):
        client("http", INT8).chat(_ask(GOLDEN[0]), max_tokens=asked)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unknown_model_or_version_is_a_domain_error(server: TritonServer, protocol: WireProtocol) -> None:
    url = server.http_url if protocol == "http" else server.grpc_url
    with (
        TritonChatClient(url, served_model_name(MODEL, 9), protocol=protocol) as unknown,
        pytest.raises(ModelNotFoundError, match="qwen3-vl-v9"),
    ):
        unknown.chat("hello")
    # Each build serves exactly its own version.
    with (
        TritonChatClient(url, NAMES[FLOAT], protocol=protocol) as known,
        pytest.raises(ModelNotFoundError, match="version 2"),
    ):
        known.chat("hello", model_version=INT8)


def _drop_weights(version: Path) -> str:
    (version / "model.safetensors").unlink()
    return "no file named model.safetensors"


def _break_model_py(version: Path) -> str:
    (version / "model.py").write_text("def initialize(:\n")
    return "SyntaxError"


@pytest.mark.parametrize("breakage", [_drop_weights, _break_model_py], ids=["missing-weights", "bad-model-py"])
def test_a_broken_build_fails_to_load_while_the_others_serve(
    server: TritonServer,
    repository: Path,
    tiny_checkpoint: Path,
    packager: Packager,
    client: Clients,
    admin: triton_http.InferenceServerClient,
    breakage: Callable[[Path], str],
) -> None:
    broken = served_model_name(MODEL, 3)
    reason = breakage(packager(tiny_checkpoint, repository, version=3))
    try:
        with pytest.raises(InferenceServerException, match=f"(?s){broken}.*{reason}"):
            admin.load_model(broken)

        for version in (FLOAT, INT8):
            assert client("http", version).chat(_ask(GOLDEN[0])).text == GOLDEN[0].answer
        for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
            with (
                TritonChatClient(url, broken, protocol=protocol) as chat,
                pytest.raises(ModelNotReadyError, match=f"'{broken}' has no available versions"),
            ):
                chat.chat(_ask(GOLDEN[0]))
    finally:
        # Triton keeps the failed model listed as UNAVAILABLE; the next load retries it afresh.
        shutil.rmtree(repository / broken)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_overload_is_a_fast_rejection_not_a_queue(server: TritonServer, protocol: WireProtocol) -> None:
    url = server.http_url if protocol == "http" else server.grpc_url
    outcomes: dict[str, tuple[Any, float]] = {}

    def send(name: str) -> None:
        started = time.monotonic()
        with TritonChatClient(url, SLOW, protocol=protocol, timeout_s=30) as chat:
            try:
                outcome: Any = chat.chat("hi")
            except Exception as exc:
                outcome = exc
        outcomes[name] = (outcome, time.monotonic() - started)

    def spawn(name: str, pause_s: float) -> threading.Thread:
        thread = threading.Thread(target=send, args=(name,))
        thread.start()
        time.sleep(pause_s)
        return thread

    # One request runs, one waits (the queue holds one), the rest find the queue full.
    threads = [spawn("running", 0.5), spawn("waiting", 0.2), spawn("extra-1", 0.0), spawn("extra-2", 0.0)]
    for thread in threads:
        thread.join()

    assert isinstance(outcomes["running"][0], ChatResult)
    for name in ("extra-1", "extra-2"):
        refused, took = outcomes[name]
        assert isinstance(refused, OverloadedError) and refused.reason == "queue_full", outcomes
        assert took < 1.0, outcomes
    refused, took = outcomes["waiting"]
    assert isinstance(refused, OverloadedError) and refused.reason == "queue_timeout", outcomes
    # Turned away once its queue timeout passed, not when the running request let go of the instance.
    assert took < SLOW_S - 0.5, outcomes
