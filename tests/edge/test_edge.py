"""The nginx edge, real: rendered config passes `nginx -t`, limits answer in OpenAI's error format,
requests survive a replica dying and a reload under load, and each request is logged as JSON."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from serving.edge.launcher import Edge, EdgeError, write_config
from serving.edge.settings import EdgeSettings
from serving.triton.launcher import free_ports

_REPLICA = """
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

name, port = sys.argv[1], int(sys.argv[2])


class Replica(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = json.dumps({"replica": name}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Model-Version", "7")
        self.send_header("X-Request-Id", "req-" + name)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", port), Replica).serve_forever()
"""


class Replica:
    """A stand-in gateway replica in its own process: answers JSON naming itself, with the headers
    the edge logs; ``kill()`` ends it the hard way, open connections and all."""

    def __init__(self, name: str) -> None:
        (self.port,) = free_ports(1)
        self.process = subprocess.Popen([sys.executable, "-c", _REPLICA, name, str(self.port)])
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture()
def replicas() -> Iterator[dict[str, Replica]]:
    servers = {"a": Replica("a"), "b": Replica("b")}
    yield servers
    for server in servers.values():
        server.kill()


def _settings(replicas: dict[str, Replica], **overrides: object) -> EdgeSettings:
    (port,) = free_ports(1)
    upstreams = [f"127.0.0.1:{server.port}" for server in replicas.values()]
    return EdgeSettings(port=port, upstreams=upstreams, **overrides)  # type: ignore[arg-type]


def test_rendered_config_passes_nginx_t(tmp_path: Path) -> None:
    config = write_config(EdgeSettings(), tmp_path / "run")

    text = config.read_text()
    assert "listen 127.0.0.1:8080" in text
    assert "server 127.0.0.1:8000" in text and "server 127.0.0.1:8010" in text
    assert "keepalive 32" in text and "client_max_body_size 20m" in text


def test_settings_refuse_what_nginx_would_misread() -> None:
    with pytest.raises(ValidationError, match="host:port"):
        EdgeSettings(upstreams=["http://127.0.0.1:8000"])
    with pytest.raises(ValidationError, match="CLIENT_MAX_BODY_SIZE"):
        EdgeSettings(client_max_body_size="20 MB")
    assert EdgeSettings(upstreams="127.0.0.1:1, 127.0.0.1:2").upstreams == ["127.0.0.1:1", "127.0.0.1:2"]  # type: ignore[arg-type]


def test_a_config_nginx_refuses_is_never_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    good = write_config(EdgeSettings(), run).read_text()
    monkeypatch.setattr("serving.edge.launcher.render", lambda *a, **k: "this is not nginx;")

    with pytest.raises(EdgeError, match="nginx refused"):
        write_config(EdgeSettings(), run)

    assert (run / "nginx.conf").read_text() == good


def test_proxies_balances_and_logs_the_answering_version(replicas: dict[str, Replica], tmp_path: Path) -> None:
    with Edge(_settings(replicas), tmp_path / "run") as edge, httpx.Client(base_url=edge.url) as client:
        answers = [client.post("/v1/chat/completions", json={"x": i}) for i in range(20)]
        time.sleep(0.2)  # nginx writes the access log line after the response

        assert {r.status_code for r in answers} == {200}
        assert {r.json()["replica"] for r in answers} == {"a", "b"}
        lines = [json.loads(line) for line in edge.access_log.read_text().splitlines()]
    assert len(lines) == 20
    assert {line["model_version"] for line in lines} == {"7"}
    assert all(line["status"] == 200 and line["request_id"].startswith("req-") for line in lines)


def test_body_over_the_limit_is_413_in_openai_format(replicas: dict[str, Replica], tmp_path: Path) -> None:
    with Edge(_settings(replicas, client_max_body_size="1k"), tmp_path / "run") as edge:
        response = httpx.post(f"{edge.url}/v1/chat/completions", content=b"x" * 4096)

    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "request_too_large" and "1k" in error["message"]


def test_a_client_over_its_rate_gets_429_in_openai_format(replicas: dict[str, Replica], tmp_path: Path) -> None:
    with (
        Edge(_settings(replicas, rate_per_s=1, burst=0), tmp_path / "run") as edge,
        httpx.Client(base_url=edge.url) as client,
    ):
        statuses = [client.get("/healthz") for _ in range(5)]

    assert statuses[0].status_code == 200
    limited = [r for r in statuses if r.status_code == 429]
    assert limited and limited[0].json()["error"]["type"] == "rate_limit_error"
    assert limited[0].headers["Retry-After"] == "1"


def test_no_replica_up_is_a_json_502(tmp_path: Path) -> None:
    dead = free_ports(1)[0]
    (port,) = free_ports(1)
    with Edge(EdgeSettings(port=port, upstreams=[f"127.0.0.1:{dead}"]), tmp_path / "run") as edge:
        response = httpx.post(f"{edge.url}/v1/chat/completions", json={})

    assert response.status_code == 502
    assert response.json()["error"]["code"] == "gateway_unavailable"


def test_a_replica_dying_costs_no_request(replicas: dict[str, Replica], tmp_path: Path) -> None:
    with Edge(_settings(replicas), tmp_path / "run") as edge, httpx.Client(base_url=edge.url) as client:
        assert client.post("/v1/chat/completions", json={}).status_code == 200
        replicas["a"].kill()

        answers = [client.post("/v1/chat/completions", json={"i": i}) for i in range(20)]

    assert [r.status_code for r in answers] == [200] * 20
    assert {r.json()["replica"] for r in answers} == {"b"}


def test_reload_under_load_fails_no_request(replicas: dict[str, Replica], tmp_path: Path) -> None:
    """A reload finishes in-flight requests on the old workers. An *idle* keep-alive connection that
    an old worker closes just as a client reuses it is reset before any answer; clients retry that
    once, as the official OpenAI client does (max_retries), and no request may fail for good."""
    with Edge(_settings(replicas), tmp_path / "run") as edge:
        stop = threading.Event()
        retried: list[str] = []

        def post(client: httpx.Client) -> int:
            try:
                return client.post("/v1/chat/completions", json={}).status_code
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError) as exc:
                retried.append(type(exc).__name__)  # closed before any answer: nothing was done yet
                return client.post("/v1/chat/completions", json={}).status_code

        def load() -> list[int]:
            codes = []
            with httpx.Client(base_url=edge.url) as client:
                while not stop.is_set():
                    try:
                        codes.append(post(client))
                    except httpx.TransportError:
                        codes.append(0)
            return codes

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(load) for _ in range(4)]
            for _ in range(3):
                time.sleep(0.3)
                edge.reload()
            time.sleep(0.5)
            stop.set()
            codes = [code for future in futures for code in future.result()]

    assert len(codes) > 50
    assert set(codes) == {200}, f"{len([c for c in codes if c != 200])} of {len(codes)} requests failed"
    assert len(retried) <= 3 * 4, f"more resets than one per connection per reload: {retried}"


def test_upstreams_come_from_the_environment_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_UPSTREAMS", "127.0.0.1:8000,127.0.0.1:8010, 10.0.0.2:8000")

    assert EdgeSettings().upstreams == ["127.0.0.1:8000", "127.0.0.1:8010", "10.0.0.2:8000"]


def test_bodies_buffer_where_the_workers_can_reach_them(tmp_path: Path) -> None:
    from serving.edge.launcher import temp_folder

    hidden = tmp_path / "private"  # pytest's own temp root is 0700: nobody else gets through it
    hidden.mkdir(mode=0o700)
    open_ = Path(tempfile.mkdtemp(prefix="edge-open-"))
    open_.chmod(0o755)

    assert temp_folder(open_ / "run", "www-data") == open_ / "run" / "tmp"
    open_.rmdir()
    elsewhere = temp_folder(hidden / "run", "www-data")
    assert not elsewhere.is_relative_to(hidden) and elsewhere.parent == Path(tempfile.gettempdir())
    assert temp_folder(hidden / "run", None) == hidden / "run" / "tmp"  # not root: nginx's workers are us
