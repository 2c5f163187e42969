"""The gateway under its real server (uvicorn, httptools) over fakes: a client that leaves mid-body,
and the SIGTERM drain (readiness 503 at once, new connections refused, requests in flight answered,
then the server stops)."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest
import uvicorn

from serving.gateway.__main__ import make_server
from serving.gateway.app import create_app
from serving.gateway.drain import DRAIN_IDLE_S, Drain
from serving.triton.launcher import free_ports
from tests.gateway.conftest import AUTH, chat_body, gateway_settings, wait_for
from tests.gateway.fakes import FakeRegistry, FakeUpstream

SLOW_MS = 1500


@dataclass
class Running:
    server: uvicorn.Server
    thread: threading.Thread
    drain: Drain
    url: str
    port: int

    def requests_by_code(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for line in httpx.get(f"{self.url}/metrics", timeout=5).text.splitlines():
            if line.startswith("gateway_requests_total{") and 'route="/v1/chat/completions"' in line:
                code = line.split('code="', 1)[1].split('"', 1)[0]
                found[code] = found.get(code, 0.0) + float(line.rsplit(" ", 1)[1])
        return found


@pytest.fixture
def running() -> Iterator[Running]:
    (port,) = free_ports(1)
    settings = gateway_settings(upstream_timeout_s=5.0)
    drain = Drain()
    app = create_app(settings, registry=FakeRegistry({"champion": 1}), upstream=FakeUpstream.serving(1), drain=drain)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http="httptools", log_level="warning")
    server = make_server(config, drain, limit_s=30.0)
    thread = threading.Thread(target=server.run, name="gateway", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
        return False

    wait_for(ready, 30, "the gateway to be ready")
    yield Running(server, thread, drain, url, port)
    server.should_exit = True
    thread.join(timeout=30)


def test_a_client_gone_mid_body_is_a_499_without_a_traceback(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with socket.create_connection(("127.0.0.1", running.port)) as raw:
        raw.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n" + b'{"model": "qwen3-vl", "messages": [' + b" " * 1000
        )
        time.sleep(0.2)  # the gateway is reading the body when the client goes

    wait_for(lambda: running.requests_by_code().get("499") == 1, 10, "the request to be counted as 499")
    assert "500" not in running.requests_by_code()
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]
    assert any("disconnected before sending its whole body" in r.getMessage() for r in caplog.records)
    # And the replica is fine: the next request is answered.
    assert httpx.post(f"{running.url}/v1/chat/completions", json=chat_body(), timeout=10).status_code == 200


def test_sigterm_drains_refuses_new_connections_and_answers_what_is_in_flight(running: Running) -> None:
    assert httpx.post(f"{running.url}/admin/faults", json={"version": 1, "delay_ms": SLOW_MS}, headers=AUTH).is_success
    with httpx.Client(base_url=running.url, timeout=30) as kept, ThreadPoolExecutor(4) as pool:
        assert kept.get("/healthz").status_code == 200  # a keep-alive connection, idle from now on
        slow = [pool.submit(httpx.post, f"{running.url}/v1/chat/completions", json=chat_body(), timeout=30)]
        slow += [pool.submit(httpx.post, f"{running.url}/v1/chat/completions", json=chat_body(), timeout=30)]
        wait_for(lambda: running.drain.in_flight == 2, 10, "two requests in flight")

        running.server.handle_exit(signal.SIGTERM, None)
        signalled = time.monotonic()

        # Readiness turns 503 at once (asked on the connection that was already open) ...
        ready = kept.get("/readyz")
        assert ready.status_code == 503 and ready.json()["reason"].startswith("shutting down")
        assert ready.headers["connection"] == "close"  # ... and the client is told to drop the connection.
        # New connections are refused: nginx sends those requests to another replica.
        wait_for(lambda: _refused(running.port), 5, "the listening socket to close")
        # What was in flight is answered in full.
        answers = [future.result() for future in slow]
        assert [a.status_code for a in answers] == [200, 200]
        assert time.monotonic() - signalled < SLOW_MS / 1000 + 1.0  # not cut short, not held back

    running.thread.join(timeout=15)
    assert not running.thread.is_alive(), "the server did not stop after its drain"


def test_a_drain_waits_for_idle_connections_to_be_let_go(running: Running) -> None:
    """An idle keep-alive connection that nobody uses: the server does not close it under the client
    (nginx may be sending on it); it stops once the connection has idled past nginx's own timeout."""
    with httpx.Client(base_url=running.url, timeout=30) as kept:
        assert kept.get("/healthz").status_code == 200
        running.server.handle_exit(signal.SIGTERM, None)
        signalled = time.monotonic()
        running.thread.join(timeout=DRAIN_IDLE_S + 15)
        waited = time.monotonic() - signalled
    assert not running.thread.is_alive()
    assert waited >= DRAIN_IDLE_S - 0.5, f"stopped after {waited:.1f} s, before nginx would have let go"


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except ConnectionRefusedError:
        return True
    return False
