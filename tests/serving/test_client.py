"""The chat client's own behaviour: message helpers, bounded retries, timeouts (no Triton needed)."""

from __future__ import annotations

import base64
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tritonclient.utils import InferenceServerException

from serving.triton import client as client_module
from serving.triton.client import (
    InferenceFailedError,
    InvalidRequestError,
    ModelNotFoundError,
    ModelNotReadyError,
    OverloadedError,
    RequestTimeoutError,
    ServerUnavailableError,
    TritonChatClient,
    WireProtocol,
    image_url,
    user_message,
)
from serving.triton.launcher import free_ports
from tests.serving.conftest import png_bytes
from tiny_model import shapes


@pytest.fixture()
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def test_user_message_puts_images_first_as_data_uris() -> None:
    image = shapes.sample(7, 0).image

    message = user_message("What color are the shapes?", [image])

    assert message["role"] == "user"
    part, text = message["content"]
    assert text == {"type": "text", "text": "What color are the shapes?"}
    header, payload = part["image_url"]["url"].split(",", 1)
    assert header == "data:image/png;base64"
    assert base64.b64decode(payload) == png_bytes(image)


def test_image_url_keeps_raw_bytes_and_their_type() -> None:
    assert image_url(b"\xff\xd8jpeg", mime="image/jpeg")["image_url"]["url"] == "data:image/jpeg;base64,/9hqcGVn"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unreachable_server_fails_after_bounded_retries(protocol: WireProtocol) -> None:
    (port,) = free_ports(1)
    client = TritonChatClient(
        f"127.0.0.1:{port}", "qwen3-vl", protocol=protocol, connect_retries=2, retry_backoff_s=0.05
    )

    started = time.monotonic()
    with pytest.raises(ServerUnavailableError, match="after 3 attempts"):
        client.chat("hello")

    # Backoff doubles: 0.05 + 0.1 s of sleeping, and no endless loop.
    assert 0.15 <= time.monotonic() - started < 10
    client.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_server_that_never_answers_times_out(silent_server: int, protocol: WireProtocol) -> None:
    with TritonChatClient(f"http://127.0.0.1:{silent_server}", "qwen3-vl", protocol=protocol, timeout_s=0.5) as client:
        started = time.monotonic()
        with pytest.raises(RequestTimeoutError):
            client.chat("hello")

    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "kwargs", [{"protocol": "ftp"}, {"timeout_s": 0}, {"connect_retries": -1}, {"retry_backoff_s": -1.0}]
)
def test_bad_options_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"protocol|timeout_s"):
        TritonChatClient("127.0.0.1:1", "m", **kwargs)  # type: ignore[arg-type]


class RefusingServer:
    """Triton refusing every request with ``error``: as an HTTP ``generate_stream`` answer (an
    ``httpx.MockTransport``) or as what tritonclient's gRPC stream hands its callback."""

    def __init__(self, error: InferenceServerException) -> None:
        self.error = error
        self.calls = 0
        self._callback: Any = None

    def http(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        status = int(self.error.status() or 500)
        return httpx.Response(status, json={"error": self.error.message()})

    # tritonclient.grpc.InferenceServerClient, the part the gRPC transport calls.
    def start_stream(self, callback: Any) -> None:
        self._callback = callback

    def async_stream_infer(self, model_name: str, inputs: list[Any], **kwargs: Any) -> None:
        self.calls += 1
        if self.error.status() == "StatusCode.UNAVAILABLE" and "connect" in (self.error.message() or ""):
            raise self.error  # a stream that cannot even open
        # A per-request error on a stream carries the message only (tritonclient's _InferStream).
        self._callback(result=None, error=InferenceServerException(msg=self.error.message()))

    def stop_stream(self, cancel_requests: bool = False) -> None:
        self._callback = None

    def close(self) -> None:
        pass


def _refused(protocol: WireProtocol, error: InferenceServerException) -> tuple[TritonChatClient, RefusingServer]:
    server = RefusingServer(error)
    client = TritonChatClient("127.0.0.1:1", "m", protocol=protocol, connect_retries=2, retry_backoff_s=0.01)

    def connect() -> Any:
        if protocol == "http":
            mock = httpx.Client(base_url="http://triton", transport=httpx.MockTransport(server.http))
            return client_module._HttpTransport(mock, "m", 1.0)
        return client_module._GrpcTransport(server, "m", 1.0)

    client._connect = connect  # type: ignore[method-assign]
    return client, server


_STATUS = {"http": "503", "grpc": "StatusCode.UNAVAILABLE"}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize(
    ("message", "reason"),
    [
        # Triton's own words (core scheduler_utils.cc, dynamic_batch_scheduler.cc), as seen from 2.51.
        ("[request id: <id_unknown>] Exceeds maximum queue size", "queue_full"),
        ("Request timeout expired", "queue_timeout"),
    ],
)
def test_queue_rejections_are_overloaded_errors_sent_once(protocol: WireProtocol, message: str, reason: str) -> None:
    client, server = _refused(protocol, InferenceServerException(msg=message, status=_STATUS[protocol]))

    with pytest.raises(OverloadedError, match=re.escape(message)) as caught:
        client.chat("hello")

    assert caught.value.reason == reason
    # Sending it again at once would only add to the overload: the caller decides when to retry.
    assert server.calls == 1


@pytest.mark.parametrize(
    ("protocol", "status", "message", "error", "calls"),
    [
        ("http", "503", "Server not ready", ServerUnavailableError, 1),
        ("http", "404", "Request for unknown model: 'm' is not found", ModelNotFoundError, 1),
        # Known to Triton, but its load failed (or it was unloaded).
        ("http", "400", "Request for unknown model: 'm' has no available versions", ModelNotReadyError, 1),
        (
            "grpc",
            "StatusCode.NOT_FOUND",
            "Request for unknown model: 'm' has no available versions",
            ModelNotReadyError,
            1,
        ),
        (
            "grpc",
            "StatusCode.UNAVAILABLE",
            "Request for unknown model: 'm' version 1 is not at ready state",
            ModelNotReadyError,
            1,
        ),
        # A refused gRPC connection is UNAVAILABLE too, and is worth the bounded retries.
        ("grpc", "StatusCode.UNAVAILABLE", "failed to connect to all addresses", ServerUnavailableError, 3),
        ("http", "400", "'max_tokens' must be a whole number from 1 to MAX_NEW_TOKENS=8", InvalidRequestError, 1),
        ("http", "500", "internal error: generation failed: RuntimeError", InferenceFailedError, 1),
        # On a gRPC stream an error has no status: model.py's own failures say so in their first words.
        ("grpc", "", "'max_tokens' must be a whole number from 1 to MAX_NEW_TOKENS=8", InvalidRequestError, 1),
        ("grpc", "", "internal error: generation failed: RuntimeError", InferenceFailedError, 1),
    ],
)
def test_other_refusals_keep_their_errors(
    protocol: WireProtocol, status: str, message: str, error: type[Exception], calls: int
) -> None:
    client, server = _refused(protocol, InferenceServerException(msg=message, status=status))

    with pytest.raises(error):
        client.chat("hello")

    assert server.calls == calls
