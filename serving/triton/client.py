"""Chat with a Qwen3-VL model served by Triton, over HTTP or gRPC, with typed results and errors.

The model is decoupled (it streams one response per token group), so Triton's plain ``infer``
endpoints refuse it; this client streams and collects the answer: over HTTP with Triton's
``generate_stream`` endpoint (server-sent events), over gRPC with the bidirectional
``ModelStreamInfer`` stream (one per thread). The tensor names come from ``core.contract``, the
module that renders the model's config, so the client and the server cannot drift apart. Errors
are domain exceptions without HTTP in them; the gateway maps them to status codes in one place.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Protocol

import httpx
import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict
from tritonclient.utils import InferenceServerException

from core.contract import (
    INPUT_MAX_TOKENS,
    INPUT_MESSAGES,
    INPUT_TEMPERATURE,
    INTERNAL_ERROR,
    OUTPUT_COMPLETION_TOKENS,
    OUTPUT_FINISH_REASON,
    OUTPUT_MODEL_VERSION,
    OUTPUT_PROMPT_TOKENS,
    OUTPUT_TEXT,
)

logger = logging.getLogger(__name__)

WireProtocol = Literal["http", "grpc"]
Message = Mapping[str, Any]
OverloadReason = Literal["queue_full", "queue_timeout"]

# Triton's own words when the dynamic batcher's queue policy turns a request away (scheduler_utils.cc
# and dynamic_batch_scheduler.cc); both come with HTTP 503 / gRPC UNAVAILABLE.
_OVERLOAD_MESSAGES: dict[str, OverloadReason] = {
    "Exceeds maximum queue size": "queue_full",
    "Request timeout expired": "queue_timeout",
}


class ChatResult(BaseModel):
    """One answer and what it cost (``first_token_s``: from sending to the first streamed piece)."""

    model_config = ConfigDict(frozen=True)

    text: str
    prompt_tokens: int
    completion_tokens: int
    model_version: str
    finish_reason: str
    latency_s: float
    first_token_s: float


class TritonClientError(Exception):
    """Base of every error this client raises."""


class ServerUnavailableError(TritonClientError):
    """No connection to the server, even after the bounded retries."""


class RequestTimeoutError(TritonClientError):
    """The server took longer than the client's timeout."""


class ModelNotFoundError(TritonClientError):
    """The server knows no such model or version (or it is not loaded)."""


class ModelNotReadyError(TritonClientError):
    """The version exists but is not loaded and ready (loading, unloaded or failed to load)."""


class OverloadedError(TritonClientError):
    """Triton refused the request unserved: the model's queue was full, or it waited past the queue timeout.

    Nothing ran, so it is safe to send again later; the client does not retry it (that would add load).
    ``reason`` is ``"queue_full"`` or ``"queue_timeout"``.
    """

    def __init__(self, message: str, reason: OverloadReason) -> None:
        super().__init__(message)
        self.reason: OverloadReason = reason


class InvalidRequestError(TritonClientError):
    """The model refused the request; the message says what to change."""


class InferenceFailedError(TritonClientError):
    """The server accepted the request but could not answer it."""


def image_url(image: Image.Image | bytes, mime: str = "image/png") -> dict[str, Any]:
    """An OpenAI-style ``image_url`` part holding the image as a base64 data URI."""
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        image, mime = buffer.getvalue(), "image/png"
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{base64.b64encode(image).decode()}"}}


def user_message(text: str, images: Sequence[Image.Image | bytes] = ()) -> dict[str, Any]:
    """A user message with the images first, then the text (the order the model was trained on)."""
    return {"role": "user", "content": [*(image_url(image) for image in images), {"type": "text", "text": text}]}


@dataclass(frozen=True, slots=True)
class _Piece:
    """One streamed response: the text it adds and the counts so far."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    model_version: str
    finish_reason: str


@dataclass(frozen=True, slots=True)
class _Stream:
    pieces: list[_Piece]
    first_at: float


class _Transport(Protocol):
    """One connection's way to stream a request and collect its pieces."""

    def generate(self, document: bytes, scalars: dict[str, Any], model_version: str) -> _Stream: ...
    def close(self) -> None: ...


class TritonChatClient:
    """Thread-safe chat client for one model; each thread gets its own connection."""

    def __init__(
        self,
        url: str,
        model_name: str,
        *,
        protocol: WireProtocol = "http",
        timeout_s: float = 30.0,
        connect_retries: int = 3,
        retry_backoff_s: float = 0.2,
    ) -> None:
        if protocol not in ("http", "grpc"):
            raise ValueError(f"protocol must be 'http' or 'grpc', not {protocol!r}")
        if timeout_s <= 0 or connect_retries < 0 or retry_backoff_s < 0:
            raise ValueError("timeout_s must be positive, connect_retries and retry_backoff_s not negative")
        # tritonclient takes host:port; accept a URL with a scheme too (what the launcher reports).
        self.url = url.split("://", 1)[-1].rstrip("/")
        self.model_name = model_name
        self.protocol = protocol
        self.timeout_s = timeout_s
        self.connect_retries = connect_retries
        self.retry_backoff_s = retry_backoff_s
        self._local = threading.local()
        self._transports: list[_Transport] = []
        self._lock = threading.Lock()

    def __enter__(self) -> TritonChatClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection this client opened, in any thread."""
        with self._lock:
            transports, self._transports = self._transports, []
        for transport in transports:
            transport.close()
        self._local = threading.local()

    def chat(
        self,
        messages: str | Sequence[Message],
        *,
        model_version: str | int | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> ChatResult:
        """Answer a conversation (or one user text); ``model_version`` None lets Triton's policy choose."""
        conversation: list[Message] = [user_message(messages)] if isinstance(messages, str) else list(messages)
        document = json.dumps(conversation).encode("utf-8")
        scalars: dict[str, Any] = {}
        if max_tokens is not None:
            scalars[INPUT_MAX_TOKENS] = max_tokens
        if temperature is not None:
            scalars[INPUT_TEMPERATURE] = temperature
        version = "" if model_version is None else str(model_version)
        started = time.perf_counter()
        stream = self._generate_with_retries(document, scalars, version)
        latency = time.perf_counter() - started
        if not stream.pieces:
            raise InferenceFailedError("the stream ended without a response carrying the model's outputs")
        last = stream.pieces[-1]
        return ChatResult(
            text="".join(piece.text for piece in stream.pieces),
            prompt_tokens=last.prompt_tokens,
            completion_tokens=last.completion_tokens,
            model_version=last.model_version,
            finish_reason=last.finish_reason,
            latency_s=latency,
            first_token_s=stream.first_at - started,
        )

    def _transport(self) -> _Transport:
        transport: _Transport | None = getattr(self._local, "transport", None)
        if transport is None:
            transport = self._connect()
            self._local.transport = transport
            with self._lock:
                self._transports.append(transport)
        return transport

    def _connect(self) -> _Transport:
        if self.protocol == "http":
            timeout = httpx.Timeout(self.timeout_s)
            # trust_env off: an HTTP_PROXY from the environment must never carry traffic to a loopback Triton.
            client = httpx.Client(base_url=f"http://{self.url}", timeout=timeout, trust_env=False)
            return _HttpTransport(client, self.model_name, self.timeout_s)
        import tritonclient.grpc as grpc

        return _GrpcTransport(grpc.InferenceServerClient(self.url), self.model_name, self.timeout_s)

    def _generate_with_retries(self, document: bytes, scalars: dict[str, Any], version: str) -> _Stream:
        attempts = self.connect_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return self._transport().generate(document, scalars, version)
            except _RetryableError as exc:
                self._drop_transport()
                if attempt == attempts:
                    raise ServerUnavailableError(
                        f"cannot reach Triton at {self.url} over {self.protocol} after {attempts} attempts: {exc}"
                    ) from exc
                delay = self.retry_backoff_s * 2 ** (attempt - 1)
                logger.warning("Triton at %s unreachable (%s); retry %d in %.1f s", self.url, exc, attempt, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _drop_transport(self) -> None:
        transport = getattr(self._local, "transport", None)
        self._local.transport = None
        if transport is not None:
            with self._lock:
                if transport in self._transports:
                    self._transports.remove(transport)
            transport.close()


class _RetryableError(Exception):
    """A connection failure; a chat request changes nothing on the server, so sending it again is safe."""


def _piece(outputs: Mapping[str, Any]) -> _Piece:
    try:
        return _Piece(
            text=str(outputs[OUTPUT_TEXT]),
            prompt_tokens=int(outputs[OUTPUT_PROMPT_TOKENS]),
            completion_tokens=int(outputs[OUTPUT_COMPLETION_TOKENS]),
            model_version=str(outputs[OUTPUT_MODEL_VERSION]),
            finish_reason=str(outputs[OUTPUT_FINISH_REASON]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InferenceFailedError(f"a response lacks an output the model's config declares: {exc!r}") from exc


class _HttpTransport:
    """Triton's ``generate_stream`` endpoint: a JSON request, the responses as server-sent events."""

    def __init__(self, client: httpx.Client, model_name: str, timeout_s: float) -> None:
        self._client = client
        self._model_name = model_name
        self._timeout_s = timeout_s

    def generate(self, document: bytes, scalars: dict[str, Any], model_version: str) -> _Stream:
        path = f"/v2/models/{self._model_name}" + (f"/versions/{model_version}" if model_version else "")
        body = {INPUT_MESSAGES: document.decode("utf-8"), **scalars}
        deadline = time.monotonic() + self._timeout_s
        pieces: list[_Piece] = []
        first_at = 0.0
        try:
            with self._client.stream("POST", path + "/generate_stream", json=body) as response:
                if response.status_code != 200:
                    raise _classify(_error_text(response.read()), str(response.status_code))
                for line in response.iter_lines():
                    if time.monotonic() > deadline:
                        raise RequestTimeoutError(f"the answer took longer than {self._timeout_s:g} s")
                    if not line.startswith("data:"):
                        continue
                    event = json.loads(line[5:])
                    if "error" in event:
                        # After the first event the status is already 200: the error travels in the stream.
                        raise _classify(str(event["error"]), "500")
                    # Triton writes its own model_version (the version that ran) over the output of that name.
                    pieces.append(_piece(event))
                    first_at = first_at or time.perf_counter()
        except httpx.TimeoutException as exc:
            raise RequestTimeoutError(f"no answer within the client timeout: {exc!r}") from exc
        except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
            raise _RetryableError(repr(exc)) from exc
        except httpx.TransportError as exc:
            raise ServerUnavailableError(f"the connection to Triton failed: {exc!r}") from exc
        return _Stream(pieces, first_at)

    def close(self) -> None:
        self._client.close()


def _error_text(payload: bytes) -> str:
    """Triton's error message from a JSON body or a one-event stream (``data: {"error": ...}``)."""
    text = payload.decode("utf-8", "replace").strip().removeprefix("data:").strip()
    try:
        return str(json.loads(text).get("error", text))
    except (ValueError, AttributeError):
        return text[:300]


class _GrpcTransport:
    """Triton's ``ModelStreamInfer``: one bidirectional stream per connection, requests one at a time."""

    def __init__(self, client: Any, model_name: str, timeout_s: float) -> None:
        self._client = client
        self._model_name = model_name
        self._timeout_s = timeout_s
        self._responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self._streaming = False

    def generate(self, document: bytes, scalars: dict[str, Any], model_version: str) -> _Stream:
        import tritonclient.grpc as grpc

        inputs = [_tensor(grpc, INPUT_MESSAGES, np.array([[document]], dtype=np.object_))]
        if INPUT_MAX_TOKENS in scalars:
            inputs.append(_tensor(grpc, INPUT_MAX_TOKENS, np.array([[scalars[INPUT_MAX_TOKENS]]], dtype=np.int32)))
        if INPUT_TEMPERATURE in scalars:
            value = np.array([[scalars[INPUT_TEMPERATURE]]], dtype=np.float32)
            inputs.append(_tensor(grpc, INPUT_TEMPERATURE, value))
        request_id = uuid.uuid4().hex
        try:
            if not self._streaming:
                self._client.start_stream(callback=self._collect)
                self._streaming = True
            self._client.async_stream_infer(
                self._model_name,
                inputs,
                model_version=model_version,
                request_id=request_id,
                enable_empty_final_response=True,
            )
        except InferenceServerException as exc:
            # A stream that broke (a refused connection, say) says why through the callback, not here.
            reported = self._reported_error()
            self._restart()
            raise _grpc_error(reported or exc) from exc
        return self._receive(request_id)

    def _reported_error(self) -> InferenceServerException | None:
        try:
            _, error = self._responses.get(timeout=1.0)
        except queue.Empty:
            return None
        return error if isinstance(error, InferenceServerException) else None

    def _receive(self, request_id: str) -> _Stream:
        deadline = time.monotonic() + self._timeout_s
        pieces: list[_Piece] = []
        first_at = 0.0
        while True:
            try:
                result, error = self._responses.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                self._restart()  # cancels the request in Triton; the next one opens a fresh stream
                raise RequestTimeoutError(f"no answer within {self._timeout_s:g} s") from None
            if error is not None:
                # A stream error carries no request id; requests go one at a time, so it is this one's.
                self._restart()
                raise _grpc_error(error)
            response = result.get_response()
            if response.id != request_id:
                continue  # a late response to an earlier request that timed out
            if response.outputs:
                outputs = {name: _first(result.as_numpy(name)) for name in (o.name for o in response.outputs)}
                pieces.append(_piece({k: v.decode("utf-8") if isinstance(v, bytes) else v for k, v in outputs.items()}))
                first_at = first_at or time.perf_counter()
            final = response.parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                return _Stream(pieces, first_at)

    def _collect(self, result: Any, error: Any) -> None:
        self._responses.put((result, error))

    def _restart(self) -> None:
        if self._streaming:
            self._streaming = False
            try:
                self._client.stop_stream(cancel_requests=True)
            except InferenceServerException:
                logger.debug("stopping a broken gRPC stream failed", exc_info=True)
        self._responses = queue.Queue()

    def close(self) -> None:
        self._restart()
        self._client.close()


def _tensor(grpc: Any, name: str, array: np.ndarray[Any, Any]) -> Any:
    datatype = {"O": "BYTES", "i": "INT32", "f": "FP32"}[array.dtype.kind]
    tensor = grpc.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _grpc_error(exc: InferenceServerException) -> TritonClientError | _RetryableError:
    status = str(exc.status()) if exc.status() is not None else ""
    message = exc.message() or str(exc)
    # gRPC reports a refused connection, a version that is not ready and a full queue all as
    # UNAVAILABLE; only the first is worth sending again at once.
    overloaded = _overload(message)
    if overloaded is not None:
        return overloaded
    if status == "StatusCode.UNAVAILABLE" and "not at ready state" not in message:
        return _RetryableError(message)
    if status == "StatusCode.DEADLINE_EXCEEDED":
        return RequestTimeoutError(message)
    if not status:
        # A stream's per-request error carries its message only: Triton's own words say what it was, and
        # model.py starts its failures with INTERNAL_ERROR; anything else is the model refusing the request.
        status = "StatusCode.INTERNAL" if message.startswith(INTERNAL_ERROR) else "StatusCode.INVALID_ARGUMENT"
    return _classify(message, status)


def _overload(message: str) -> OverloadedError | None:
    for words, reason in _OVERLOAD_MESSAGES.items():
        if words in message:
            return OverloadedError(f"Triton turned the request away ({reason.replace('_', ' ')}): {message}", reason)
    return None


def _classify(message: str, status: str) -> TritonClientError:
    overloaded = _overload(message)
    if overloaded is not None:
        return overloaded
    # A version still loading, or a model whose load failed or that was unloaded (Triton still lists it).
    if "not at ready state" in message or "has no available versions" in message:
        return ModelNotReadyError(message)
    if status in ("404", "StatusCode.NOT_FOUND") or "unknown model" in message:
        return ModelNotFoundError(message)
    if status in ("400", "StatusCode.INVALID_ARGUMENT"):
        return InvalidRequestError(message)
    if status in ("503", "StatusCode.UNAVAILABLE"):
        return ServerUnavailableError(message)
    return InferenceFailedError(f"{status}: {message}")


def _first(array: Any) -> Any:
    if array is None:
        raise InferenceFailedError("the response lacks an output the model's config declares")
    return np.asarray(array).reshape(-1)[0]
