"""Chat with a Qwen3-VL model served by Triton, over HTTP or gRPC, with typed results and errors.

The tensor names come from ``core.contract``, the module that renders the model's config, so the
client and the server cannot drift apart. Errors are domain exceptions without HTTP in them; the
gateway maps them to status codes in one place.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Protocol

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict
from tritonclient.utils import InferenceServerException

from core.contract import (
    INPUT_MAX_TOKENS,
    INPUT_MESSAGES,
    INPUT_TEMPERATURE,
    OUTPUT_COMPLETION_TOKENS,
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
    """One answer and what it cost."""

    model_config = ConfigDict(frozen=True)

    text: str
    prompt_tokens: int
    completion_tokens: int
    model_version: str
    latency_s: float


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


class _Transport(Protocol):
    """The part of tritonclient's two clients this module uses."""

    def infer(self, inputs: list[Any], outputs: list[Any], model_version: str) -> Any: ...
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
        inputs = self._inputs(conversation, max_tokens, temperature)
        outputs = [
            self._module.InferRequestedOutput(name)
            for name in (OUTPUT_TEXT, OUTPUT_PROMPT_TOKENS, OUTPUT_COMPLETION_TOKENS, OUTPUT_MODEL_VERSION)
        ]
        version = "" if model_version is None else str(model_version)
        started = time.perf_counter()
        result = self._infer_with_retries(inputs, outputs, version)
        latency = time.perf_counter() - started
        return ChatResult(
            text=_first(result.as_numpy(OUTPUT_TEXT)).decode("utf-8"),
            prompt_tokens=int(_first(result.as_numpy(OUTPUT_PROMPT_TOKENS))),
            completion_tokens=int(_first(result.as_numpy(OUTPUT_COMPLETION_TOKENS))),
            model_version=_first(result.as_numpy(OUTPUT_MODEL_VERSION)).decode("utf-8"),
            latency_s=latency,
        )

    @property
    def _module(self) -> Any:
        if self.protocol == "http":
            import tritonclient.http as module
        else:
            import tritonclient.grpc as module
        return module

    def _inputs(self, conversation: list[Message], max_tokens: int | None, temperature: float | None) -> list[Any]:
        module = self._module
        document = json.dumps(conversation).encode("utf-8")
        messages = module.InferInput(INPUT_MESSAGES, [1, 1], "BYTES")
        messages.set_data_from_numpy(np.array([[document]], dtype=np.object_))
        inputs = [messages]
        if max_tokens is not None:
            tensor = module.InferInput(INPUT_MAX_TOKENS, [1, 1], "INT32")
            tensor.set_data_from_numpy(np.array([[max_tokens]], dtype=np.int32))
            inputs.append(tensor)
        if temperature is not None:
            tensor = module.InferInput(INPUT_TEMPERATURE, [1, 1], "FP32")
            tensor.set_data_from_numpy(np.array([[temperature]], dtype=np.float32))
            inputs.append(tensor)
        return inputs

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
            import tritonclient.http as http

            client = http.InferenceServerClient(
                self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
            )
            return _HttpTransport(client, self.model_name)
        import tritonclient.grpc as grpc

        return _GrpcTransport(grpc.InferenceServerClient(self.url), self.model_name, self.timeout_s)

    def _infer_with_retries(self, inputs: list[Any], outputs: list[Any], version: str) -> Any:
        attempts = self.connect_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return self._transport().infer(inputs, outputs, version)
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


class _HttpTransport:
    def __init__(self, client: Any, model_name: str) -> None:
        self._client = client
        self._model_name = model_name

    def infer(self, inputs: list[Any], outputs: list[Any], model_version: str) -> Any:
        try:
            return self._client.infer(self._model_name, inputs, outputs=outputs, model_version=model_version)
        except TimeoutError as exc:
            raise RequestTimeoutError(f"no answer within the client timeout: {exc}") from exc
        except OSError as exc:
            raise _RetryableError(str(exc)) from exc
        except InferenceServerException as exc:
            raise _classify(exc, str(exc.status())) from exc

    def close(self) -> None:
        self._client.close()


class _GrpcTransport:
    def __init__(self, client: Any, model_name: str, timeout_s: float) -> None:
        self._client = client
        self._model_name = model_name
        self._timeout_s = timeout_s

    def infer(self, inputs: list[Any], outputs: list[Any], model_version: str) -> Any:
        try:
            return self._client.infer(
                self._model_name, inputs, outputs=outputs, model_version=model_version, client_timeout=self._timeout_s
            )
        except InferenceServerException as exc:
            status = str(exc.status())
            message = exc.message() or ""
            # gRPC reports a refused connection, a version that is not ready and a full queue all as
            # UNAVAILABLE; only the first is worth sending again at once.
            overloaded = _overload(message) if status == "StatusCode.UNAVAILABLE" else None
            if overloaded is not None:
                raise overloaded from exc
            if status == "StatusCode.UNAVAILABLE" and "not at ready state" not in message:
                raise _RetryableError(message) from exc
            if status == "StatusCode.DEADLINE_EXCEEDED":
                raise RequestTimeoutError(f"no answer within {self._timeout_s} s") from exc
            raise _classify(exc, status) from exc

    def close(self) -> None:
        self._client.close()


def _overload(message: str) -> OverloadedError | None:
    for words, reason in _OVERLOAD_MESSAGES.items():
        if words in message:
            return OverloadedError(f"Triton turned the request away ({reason.replace('_', ' ')}): {message}", reason)
    return None


def _classify(exc: InferenceServerException, status: str) -> TritonClientError:
    message = exc.message() or str(exc)
    overloaded = _overload(message)
    if overloaded is not None and status in ("503", "StatusCode.UNAVAILABLE"):
        return overloaded
    # A version still loading, or a model whose load failed or that was unloaded (Triton still lists it).
    if "not at ready state" in message or "has no available versions" in message:
        return ModelNotReadyError(message)
    if status in ("404", "StatusCode.NOT_FOUND"):
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
