"""The chat client's own behaviour: message helpers, bounded retries, timeouts (no Triton needed)."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator

import pytest

from serving.triton.client import (
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
