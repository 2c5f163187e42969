"""What a client may make the stack do: no fetching of remote images unless their host is allow-listed
(and then not a connection to anywhere else), and no body or image over the limits at nginx or in
the gateway (413 in OpenAI's error format)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from serving.gateway.errors import GatewayError, InvalidRequestError
from serving.gateway.images import RemoteImages
from serving.gateway.settings import GatewaySettings
from tests.stack_fixture import MODEL, TOKEN, Stack, question


class Listener:
    """A TCP port that records every connection made to it (and answers nothing)."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.socket.getsockname()[1])
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.connections += 1
            connection.close()

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    found = Listener()
    yield found
    found.close()


def with_image(url: str) -> dict[str, Any]:
    body = question(0)
    body["messages"][0]["content"][0]["image_url"]["url"] = url
    return body


@pytest.mark.slow
@pytest.mark.triton
@pytest.mark.mlflow
def test_a_remote_image_url_is_refused_without_any_connection(stack: Stack, listener: Listener) -> None:
    port = listener.port
    urls = [
        f"https://127.0.0.1:{port}/cat.png",
        f"http://127.0.0.1:{port}/cat.png",
        f"https://localhost:{port}/cat.png",
        f"//127.0.0.1:{port}/cat.png",
        f"ftp://127.0.0.1:{port}/cat.png",
        "file:///etc/passwd",
        f"https://images.example@127.0.0.1:{port}/cat.png",
    ]
    for url in urls:
        response = httpx.post(f"{stack.edge_url}/v1/chat/completions", json=with_image(url), timeout=30)
        assert response.status_code == 400, (url, response.text)
        error = response.json()["error"]
        assert error["param"] == "messages.0.content.0.image_url.url", error
        assert "remote image URLs are refused" in error["message"], error
    time.sleep(0.5)
    assert listener.connections == 0


def fetch(hosts: list[str], url: str) -> GatewayError | None:
    async def run() -> GatewayError | None:
        images = RemoteImages(hosts, 2.0, 1 << 20)
        try:
            await images.fetch(url, "messages.0.content.0.image_url")
        except GatewayError as exc:
            return exc
        finally:
            await images.close()
        return None

    return asyncio.run(run())


def test_only_an_allow_listed_host_is_ever_contacted(listener: Listener) -> None:
    port = listener.port
    # Not listed, or a listed name used as user info in front of another host: refused before connecting.
    for hosts, url in [
        ([], f"https://127.0.0.1:{port}/cat.png"),
        (["images.example"], f"https://127.0.0.1:{port}/cat.png"),
        (["images.example"], f"https://images.example@127.0.0.1:{port}/cat.png"),
        (["images.example"], f"https://images.example:443@127.0.0.1:{port}/cat.png"),
        (["images.example"], f"https://127.0.0.1:{port}#@images.example/cat.png"),
        (["127.0.0.1"], f"http://127.0.0.1:{port}/cat.png"),  # listed, but not over https
    ]:
        refused = fetch(hosts, url)
        assert isinstance(refused, InvalidRequestError) and "remote image URLs are refused" in refused.message, url
    assert listener.connections == 0
    # Listed: fetched, from that host only (the listener speaks no TLS, so the fetch fails after connecting).
    failed = fetch(["127.0.0.1"], f"https://127.0.0.1:{port}/cat.png")
    assert isinstance(failed, InvalidRequestError) and "could not be fetched" in failed.message
    assert listener.connections == 1
    with pytest.raises(ValueError, match="bare host names"):
        GatewaySettings(admin_token=TOKEN, image_url_hosts=["https://images.example"])


@pytest.mark.slow
@pytest.mark.triton
@pytest.mark.mlflow
def test_bodies_and_images_over_the_limits_are_413_at_nginx_and_in_the_gateway(stack: Stack) -> None:
    url = f"{stack.edge_url}/v1/chat/completions"
    headers = {"Content-Type": "application/json"}
    # Over nginx's client_max_body_size (20m): nginx answers, the gateways never see it.
    at_edge = httpx.post(url, content=b"{" + b" " * (21 * 1024 * 1024) + b"}", headers=headers, timeout=60)
    assert at_edge.status_code == 413, at_edge.text
    assert at_edge.json()["error"]["code"] == "request_too_large"
    # Under nginx's limit, over the gateway's GATEWAY_MAX_BODY_BYTES (16 MiB).
    in_gateway = httpx.post(url, content=b"{" + b" " * (17 * 1024 * 1024) + b"}", headers=headers, timeout=60)
    assert in_gateway.status_code == 413, in_gateway.text
    assert "GATEWAY_MAX_BODY_BYTES" in in_gateway.json()["error"]["message"]
    # One image over GATEWAY_MAX_IMAGE_BYTES (8 MiB decoded) in a body under both limits.
    image = "data:image/png;base64," + "A" * (12 * 1024 * 1024)
    too_big = httpx.post(url, json=with_image(image), timeout=60)
    assert too_big.status_code == 413, too_big.text
    error = too_big.json()["error"]
    assert "GATEWAY_MAX_IMAGE_BYTES" in error["message"] and error["param"] == "messages.0.content.0.image_url.url"
    # The stack still answers a normal request right after.
    normal = httpx.post(url, json=question(1), timeout=60)
    assert normal.status_code == 200 and normal.json()["model"] == MODEL
