"""model.py's chat contract under random input: every request of a batch gets exactly one streamed answer
or one INVALID_ARG (HTTP 400), never an internal error, and a good neighbour is always answered.

Two layers: ``TritonPythonModel.execute`` with the real tiny model behind the real
``triton_python_backend_utils`` (the stub's injected types faked as in tests/serving/test_backend_unit.py),
and a smaller sample through a real Triton over its gRPC stream (the decoupled model's transport that
carries any bytes), where only answers and refusals may come back, never an internal error.
"""

from __future__ import annotations

import json
import math
import queue
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from core.contract import INTERNAL_ERROR, render_config
from serving.triton.launcher import TritonServer
from tests.fuzz.conftest import SEED
from tests.fuzz.strategies import CONVERSATION, ODD_CONVERSATION, often
from tests.fuzz.tally import Tally
from tests.gateway.e2e.conftest import MAX_NEW_TOKENS as E2E_MAX_NEW_TOKENS
from tests.gateway.e2e.conftest import MODEL
from tests.serving.conftest import serving_params
from tests.serving.test_backend_unit import (
    FakeLogger,
    FakeResponse,
    FakeSender,
    FakeTensor,
    FakeTritonError,
    _as_triton_passes_it,
    backend,
)

__all__ = ["backend"]

pytestmark = pytest.mark.slow

# Small limits, so random requests cross each of them often.
MAX_NEW_TOKENS, MAX_IMAGES, MAX_IMAGE_PIXELS, MAX_PROMPT_TOKENS = 3, 3, 128 * 128, 400
LIMITS = {
    "max_new_tokens": MAX_NEW_TOKENS,
    "max_images": MAX_IMAGES,
    "max_image_pixels": MAX_IMAGE_PIXELS,
    "max_prompt_tokens": MAX_PROMPT_TOKENS,
    "max_history": 1,
}
NEIGHBOUR = [{"role": "user", "content": "What color is the square?"}]
INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
FLOAT32 = st.floats(width=32) | st.sampled_from([0.0, -0.0, 1e-45, 2.0, 1e30, math.inf, -math.inf, math.nan])


@pytest.fixture(scope="module")
def model(backend: ModuleType, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """model.py initialized as the stub does, over the real tiny checkpoint (no fake model)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, fake in (
            ("TritonError", FakeTritonError),
            ("Tensor", FakeTensor),
            ("InferenceResponse", FakeResponse),
            ("Logger", FakeLogger),
        ):
            patch.setattr(backend.pb_utils, name, fake, raising=False)
        repository = tmp_path_factory.mktemp("backend-fuzz")
        (repository / "1").symlink_to(tiny_checkpoint)
        config = _as_triton_passes_it(render_config("qwen3-vl-v1", 1, serving_params(**LIMITS)))
        served = backend.TritonPythonModel()
        served.initialize(
            {
                "model_config": json.dumps(config),
                "model_version": "1",
                "model_repository": str(repository),
                "model_instance_kind": "CPU",
                "model_instance_device_id": "0",
            }
        )
        yield served
        served.finalize()


class Request:
    """pb_utils.InferenceRequest as the backend reads it: named tensors, any of them possibly absent."""

    def __init__(self, tensors: dict[str, np.ndarray]) -> None:
        self._inputs = [FakeTensor(name, array) for name, array in tensors.items()]
        self.tensors = tensors
        self.sender = FakeSender()

    def inputs(self) -> list[FakeTensor]:
        return self._inputs

    def get_response_sender(self) -> FakeSender:
        return self.sender

    def is_cancelled(self) -> bool:
        return False


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
#: The ``messages`` document: a conversation, other JSON, or bytes that are not UTF-8 JSON at all.
DOCUMENTS = often(
    CONVERSATION.map(lambda messages: json.dumps(messages).encode()),
    st.one_of(
        ODD_CONVERSATION.map(lambda messages: json.dumps(messages).encode()),
        ODD_CONVERSATION.map(lambda messages: json.dumps(messages).encode()),
        _JSON.map(lambda value: json.dumps(value).encode()),
        st.binary(max_size=40),
    ),
    3,
)


@st.composite
def tensors(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """One request's tensors as Triton hands them over: batch dimension first, config dtypes, odd shapes at times."""
    out: dict[str, np.ndarray] = {}
    documents = draw(often(st.lists(DOCUMENTS, min_size=1, max_size=1), st.lists(DOCUMENTS, max_size=2), 8))
    if draw(st.sampled_from([True] * 19 + [False])):  # one request in twenty lacks its required input
        out["messages"] = np.array([documents], dtype=np.object_).reshape(1, len(documents))
    if draw(st.booleans()):
        one = st.integers(min_value=1, max_value=MAX_NEW_TOKENS).map(lambda value: [value])
        values = draw(often(one, st.lists(INT32 | st.sampled_from([0, MAX_NEW_TOKENS + 1]), max_size=2), 6))
        out["max_tokens"] = np.array([values], dtype=np.int32).reshape(1, len(values))
    if draw(st.booleans()):
        # Tiny positive temperatures too: dividing logits by 1e-40 once made generate fail (NaN probabilities).
        usual = st.floats(min_value=0.0, max_value=2.0, width=32) | st.sampled_from([1e-45, 1e-38, 1e-30, 1e-6])
        one = usual.map(lambda value: [value])
        values = draw(often(one, st.lists(FLOAT32, max_size=2), 6))
        out["temperature"] = np.array([values], dtype=np.float32).reshape(1, len(values))
    return out


def _must_refuse(request: dict[str, np.ndarray], max_new_tokens: int = MAX_NEW_TOKENS) -> str | None:
    """Why the request must be a 400, where that is plain from the outside; None when it may be answered."""
    if "messages" not in request or request["messages"].size != 1:
        return "one conversation per request"
    for name, low, high in (("max_tokens", 1, max_new_tokens), ("temperature", 0, math.inf)):
        if name in request:
            values = request[name].reshape(-1)
            if values.size != 1 or not math.isfinite(float(values[0])) or not low <= float(values[0]) <= high:
                return f"{name} out of range"
    try:
        messages = json.loads(bytes(request["messages"].reshape(-1)[0]).decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "not UTF-8 JSON"
    if not isinstance(messages, list) or not messages:
        return "not a non-empty list"
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return "the last message is not the user's"
    return None


OUTPUTS = {"text", "prompt_tokens", "completion_tokens", "model_version", "finish_reason", "token_logprobs"}


def _check_answer(responses: list[FakeResponse], request: dict[str, np.ndarray]) -> None:
    for response in responses:
        outputs = {tensor.name(): tensor.as_numpy().reshape(-1)[0] for tensor in response.output_tensors()}
        assert set(outputs) == OUTPUTS
        bytes(outputs["text"]).decode("utf-8")
        assert outputs["model_version"] == b"1"
    last = {tensor.name(): tensor.as_numpy().reshape(-1)[0] for tensor in responses[-1].output_tensors()}
    cap = int(request["max_tokens"].reshape(-1)[0]) if "max_tokens" in request else MAX_NEW_TOKENS
    assert bytes(last["finish_reason"]) in (b"stop", b"length")
    # The end-of-sequence token is not counted: an answer that ends at once has no completion tokens.
    assert 0 <= int(last["completion_tokens"]) <= cap
    assert 1 <= int(last["prompt_tokens"]) <= MAX_PROMPT_TOKENS


def test_every_request_of_a_batch_gets_one_answer_or_one_400(model: Any) -> None:
    tally = Tally.named("backend execute (unit, real tiny model)")
    neighbour = {"messages": np.array([[json.dumps(NEIGHBOUR).encode()]], dtype=np.object_)}

    @seed(SEED)
    @settings(
        max_examples=500,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(batch=st.lists(tensors(), min_size=1, max_size=4), where=st.integers(min_value=0, max_value=4))
    def run(batch: list[dict[str, np.ndarray]], where: int) -> None:
        FakeLogger.lines = []
        requests = [*batch[:where], neighbour, *batch[where:]]

        sent = [Request(tensors) for tensors in requests]
        assert model.execute(sent) is None

        for request, fake in zip(requests, sent, strict=True):
            sender = fake.sender
            assert sender.finished and [flags for _, flags in sender.sent].count(1) == 1, sender.sent
            responses = sender.responses
            assert responses, "a stream ended without an answer or an error"
            errors = [response for response in responses if response.has_error()]
            if errors:
                assert len(errors) == 1 and len(responses) == 1, "an error came mid-stream"
                error = errors[0].error()
                assert error.code() == FakeTritonError.INVALID_ARG, error.message()
                assert error.message()
                tally.add("400")
            else:
                assert _must_refuse(request) is None, (_must_refuse(request), request)
                _check_answer(responses, request)
                tally.add("answered")
        assert not sent[min(where, len(batch))].sender.last().has_error(), "the good neighbour was refused"
        assert [line for line in FakeLogger.lines if line[0] != "info"] == [], FakeLogger.lines
        tally.add("batches")

    run()
    assert tally.counts["answered"] > tally.counts["batches"], "hardly any random request was answered"


class _Stream:
    """One gRPC stream to Triton (a thread's own): send a request, wait for its final response."""

    def __init__(self, url: str) -> None:
        import tritonclient.grpc as grpc

        self.grpc = grpc
        self.client = grpc.InferenceServerClient(url)
        self.responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.responses.put((result, error)))

    def ask(self, request: dict[str, np.ndarray]) -> str:
        """``"200"`` for a whole answer, ``"400"`` for a refusal; anything else fails the test."""
        inputs = []
        for name, array in request.items():
            datatype = "BYTES" if array.dtype == np.object_ else "INT32" if array.dtype == np.int32 else "FP32"
            tensor = self.grpc.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        request_id = uuid.uuid4().hex
        self.client.async_stream_infer(f"{MODEL}-v1", inputs, request_id=request_id, enable_empty_final_response=True)
        pieces = 0
        while True:
            result, error = self.responses.get(timeout=120)
            if error is not None:
                message = error.message() or str(error)
                assert not message.startswith(INTERNAL_ERROR), message
                assert pieces == 0, f"an error after {pieces} pieces: {message}"
                return "400"
            response = result.get_response()
            assert response.id == request_id
            pieces += bool(response.outputs)
            if response.parameters["triton_final_response"].bool_param:
                assert pieces, "the stream ended without an answer"
                return "200"

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


@pytest.mark.triton
def test_a_real_triton_answers_only_200_or_400(triton: TritonServer) -> None:
    """Sent together, so Triton's dynamic batcher puts bad requests in the same ``execute`` as good ones."""
    tally = Tally.named("backend through a real Triton (gRPC stream)")
    neighbour = {"messages": np.array([[json.dumps(NEIGHBOUR).encode()]], dtype=np.object_)}
    url = triton.grpc_url
    streams = [_Stream(url) for _ in range(5)]
    try:
        with ThreadPoolExecutor(max_workers=5) as pool:

            @seed(SEED)
            @settings(
                max_examples=80,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(batch=st.lists(tensors(), min_size=1, max_size=4))
            def run(batch: list[dict[str, np.ndarray]]) -> None:
                requests = [neighbour, *batch]
                outcomes = list(pool.map(lambda pair: pair[0].ask(pair[1]), zip(streams, requests, strict=False)))
                for request, outcome in zip(batch, outcomes[1:], strict=True):
                    tally.add(outcome)
                    if outcome == "200":
                        assert _must_refuse(request, E2E_MAX_NEW_TOKENS) is None, (_must_refuse(request), request)
                assert outcomes[0] == "200", "the good neighbour was refused"

            run()
    finally:
        for stream in streams:
            stream.close()
