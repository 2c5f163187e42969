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

from serving.edge.config import PUBLIC_PATHS, PUBLIC_PREFIXES
from serving.edge.launcher import Edge, EdgeError, write_config
from serving.edge.settings import EdgeSettings
from serving.triton.launcher import free_ports

_REPLICA = """
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

name, port, log, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]


class Replica(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with open(log, "a") as handle:
            handle.write(json.dumps({"method": self.command, "path": self.path}) + "\\n")
        if mode == "crash" and self.command == "POST":
            self.close_connection = True  # as a replica that dies mid-request: no answer at all
            return
        body = json.dumps({"replica": name, "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Model-Version", "7")
        self.send_header("X-Request-Id", "req-" + name)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_DELETE = do_POST

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", port), Replica).serve_forever()
"""


class Replica:
    """A stand-in gateway replica in its own process: answers JSON naming itself and the path it got,
    with the headers the edge logs, and records every request it receives; ``kill()`` ends it the
    hard way, open connections and all. ``mode="crash"``: it reads a POST, then closes the
    connection without an answer, as a replica that dies mid-request."""

    def __init__(self, name: str, folder: Path | None = None, mode: str = "ok") -> None:
        (self.port,) = free_ports(1)
        self.log = (folder or Path(tempfile.mkdtemp(prefix="replica-"))) / f"{name}.jsonl"
        self.log.touch()
        self.process = subprocess.Popen([sys.executable, "-c", _REPLICA, name, str(self.port), str(self.log), mode])
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

    def received(self) -> list[dict[str, str]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture()
def replicas(tmp_path: Path) -> Iterator[dict[str, Replica]]:
    servers = {"a": Replica("a", tmp_path), "b": Replica("b", tmp_path)}
    yield servers
    for server in servers.values():
        server.kill()


def _settings(replicas: dict[str, Replica], **overrides: object) -> EdgeSettings:
    port, internal = free_ports(2)
    upstreams = [f"127.0.0.1:{server.port}" for server in replicas.values()]
    return EdgeSettings(port=port, internal_port=internal, upstreams=upstreams, **overrides)  # type: ignore[arg-type]


def test_rendered_config_passes_nginx_t(tmp_path: Path) -> None:
    config = write_config(EdgeSettings(), tmp_path / "run")

    text = config.read_text()
    assert "listen 127.0.0.1:8080" in text and "listen 127.0.0.1:8081;" in text
    assert "server 127.0.0.1:8000" in text and "server 127.0.0.1:8010" in text
    assert "keepalive 32" in text and "client_max_body_size 20m" in text
    # A request that reached a gateway is never sent to another one.
    assert "proxy_next_upstream error timeout;" in text and "non_idempotent" not in text


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
    dead, port, internal = free_ports(3)
    settings = EdgeSettings(port=port, internal_port=internal, upstreams=[f"127.0.0.1:{dead}"])
    with Edge(settings, tmp_path / "run") as edge:
        response = httpx.post(f"{edge.url}/v1/chat/completions", json={})

    assert response.status_code == 502
    assert response.json()["error"]["code"] == "gateway_unavailable"


def _connections_to(port: int) -> int:
    """Open TCP connections (established, or closed by the other side) to 127.0.0.1:``port``."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2] == f"0100007F:{port:04X}" and fields[3] in ("01", "08"):  # ESTABLISHED, CLOSE_WAIT
            count += 1
    return count


def test_a_replica_dying_costs_no_later_request(replicas: dict[str, Replica], tmp_path: Path) -> None:
    """Once nginx has seen a replica's connections close, every request goes to the others. (What it
    had in flight there is lost: nginx answers 502 and does not resend a POST that may have run.)"""
    with Edge(_settings(replicas), tmp_path / "run") as edge, httpx.Client(base_url=edge.url) as client:
        for i in range(4):
            assert client.post("/v1/chat/completions", json={"i": i}).status_code == 200
        replicas["a"].kill()
        deadline = time.monotonic() + 10
        while _connections_to(replicas["a"].port) and time.monotonic() < deadline:
            time.sleep(0.05)

        answers = [client.post("/v1/chat/completions", json={"i": i}) for i in range(20)]

    assert [r.status_code for r in answers] == [200] * 20
    assert {r.json()["replica"] for r in answers} == {"b"}


def test_a_post_that_reached_a_replica_is_never_sent_to_another(tmp_path: Path) -> None:
    """A replica that takes a POST and dies before answering: the client gets a 502, and the other
    replica never sees that request (an admin step would step twice, a generation would run twice).
    A GET, or a replica that cannot be connected to, goes to the other replica."""
    crashing, healthy = Replica("a", tmp_path, mode="crash"), Replica("b", tmp_path)
    dead = free_ports(1)[0]
    try:
        port, internal = free_ports(2)
        upstreams = [f"127.0.0.1:{crashing.port}", f"127.0.0.1:{healthy.port}", f"127.0.0.1:{dead}"]
        settings = EdgeSettings(port=port, internal_port=internal, upstreams=upstreams, fail_timeout_s=1)
        with Edge(settings, tmp_path / "run") as edge, httpx.Client(base_url=edge.url) as client:
            posts = [client.post("/v1/chat/completions", json={"i": i}) for i in range(12)]
            time.sleep(1.2)  # past fail_timeout: nginx tries the crashing replica again
            gets = [client.get("/v1/models") for _ in range(6)]
    finally:
        crashing.kill()
        healthy.kill()

    statuses = [r.status_code for r in posts]
    to_a = [r for r in crashing.received() if r["method"] == "POST"]
    to_b = [r for r in healthy.received() if r["method"] == "POST"]
    assert to_a, "the crashing replica was never chosen: the test proves nothing"
    assert statuses.count(502) == len(to_a) and statuses.count(200) == len(to_b)
    assert len(to_a) + len(to_b) == len(posts), "a POST was delivered to two replicas"
    assert all(r.json()["error"]["code"] == "gateway_unavailable" for r in posts if r.status_code == 502)
    # A replica that cannot be connected to (the dead one) is skipped for GETs and POSTs alike.
    assert [r.status_code for r in gets] == [200] * 6


INTERNAL_PATHS = [
    ("GET", "/"),
    ("GET", "/status.json"),
    ("GET", "/metrics"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("GET", "/admin/state"),
    ("POST", "/admin/weight"),
    ("POST", "/admin/faults"),
    ("DELETE", "/admin/faults"),
]
#: Spellings of internal paths that a proxy matching on raw prefixes would let through.
DISGUISED = [
    "/v1/../admin/state",
    "/v1/%2e%2e/admin/state",
    "/v1/chat/completions/../../metrics",
    "/healthz/../status.json",
    "//admin/state",
    "/v1/models/../../readyz",
    "/v1/chat/completions/x",
    "/V1/models",
    "/admin/state?/v1/models",
    "/v1/models/%2e%2e/%2e%2e/readyz",
    "/v1/models/..%2F..%2Freadyz",
]


def test_the_public_listener_serves_the_openai_api_and_healthz_only(
    replicas: dict[str, Replica], tmp_path: Path
) -> None:
    with Edge(_settings(replicas), tmp_path / "run") as edge, httpx.Client(base_url=edge.url) as client:
        allowed = [
            client.post("/v1/chat/completions", json={}),
            client.get("/v1/models"),
            client.get("/v1/models/qwen3-vl-v2"),
            client.get("/healthz"),
        ]
        hidden = [client.request(method, path, json={}) for method, path in INTERNAL_PATHS]
        disguised = [client.get(path) for path in DISGUISED]
        # A spelling that normalizes to a public path reaches the gateway as exactly that path.
        dotted = client.get("/admin/../v1/models?x=1")

    assert [r.status_code for r in allowed] == [200, 200, 200, 200]
    for response in hidden + disguised:
        assert response.status_code == 404, (response.request.url, response.text)
        assert response.json()["error"]["code"] == "not_found"
    assert dotted.status_code == 200 and dotted.json()["path"] == "/v1/models?x=1"
    reached = {r["path"] for replica in replicas.values() for r in replica.received()}
    assert reached <= {"/v1/chat/completions", "/v1/models", "/healthz", "/v1/models?x=1", "/v1/models/qwen3-vl-v2"}, (
        reached
    )


def test_the_internal_listener_serves_every_path_on_loopback(replicas: dict[str, Replica], tmp_path: Path) -> None:
    settings = _settings(replicas)
    with Edge(settings, tmp_path / "run") as edge, httpx.Client(base_url=edge.internal_url) as client:
        answers = [client.request(method, path, json={}) for method, path in INTERNAL_PATHS]

    assert edge.internal_url == f"http://127.0.0.1:{settings.internal_port}"
    assert [r.status_code for r in answers] == [200] * len(INTERNAL_PATHS)
    assert [r.json()["path"] for r in answers] == [path for _, path in INTERNAL_PATHS]


def test_the_internal_listener_refuses_a_public_address() -> None:
    for address in ("0.0.0.0", "::", "8.8.8.8"):
        with pytest.raises(ValidationError, match="EDGE_INTERNAL_HOST"):
            EdgeSettings(internal_host=address)
    assert EdgeSettings(host="0.0.0.0", internal_host="10.0.0.5").internal_host == "10.0.0.5"  # a private network
    with pytest.raises(ValidationError, match="must differ"):
        EdgeSettings(port=9000, internal_port=9000)


def test_the_public_paths_are_the_gateways_openai_routes() -> None:
    """A route the gateway adds under /v1 is either public at the edge or decided not to be."""
    from serving.gateway.app import create_app
    from tests.gateway.conftest import gateway_settings
    from tests.gateway.fakes import FakeRegistry, FakeUpstream

    app = create_app(gateway_settings(), registry=FakeRegistry({"champion": 1}), upstream=FakeUpstream.serving(1))
    routes = {str(route.path) for route in app.routes if hasattr(route, "path")}
    public = {path for path in routes if path.startswith("/v1/")} | {"/healthz"}
    assert public == {*PUBLIC_PATHS, *(f"{prefix}{{model:path}}" for prefix in PUBLIC_PREFIXES)}


class _ResetCounter:
    """Sends a request again when the connection was reset or closed before any answer, as browsers
    do for a reused connection (and the official OpenAI client for any connection error)."""

    def __init__(self, retries: int = 2) -> None:
        self.retries = retries
        self.resets: list[str] = []
        self._lock = threading.Lock()

    def post(self, client: httpx.Client) -> int:
        for attempt in range(self.retries + 1):
            try:
                return client.post("/v1/chat/completions", json={}).status_code
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.ConnectError) as exc:
                with self._lock:
                    self.resets.append(type(exc).__name__)
                if attempt == self.retries:
                    return 0
        raise AssertionError("unreachable")


RELOADS = 20


def test_reloads_under_load_fail_no_request_for_a_client_that_retries_a_reset(
    replicas: dict[str, Replica], tmp_path: Path
) -> None:
    """A reload finishes in-flight requests on the old workers, but they close their idle client
    connections at once: a client that writes on one at that instant gets a reset before nginx read
    its request (nothing was done), the limit the README states. A client that sends such a request
    again, as the OpenAI client does, loses nothing, over many reloads."""
    counter = _ResetCounter()
    with Edge(_settings(replicas), tmp_path / "run") as edge:
        stop = threading.Event()

        def load() -> list[int]:
            codes = []
            with httpx.Client(base_url=edge.url) as client:
                while not stop.is_set():
                    codes.append(counter.post(client))
            return codes

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(load) for _ in range(4)]
            for _ in range(RELOADS):
                time.sleep(0.25)
                edge.reload()
            time.sleep(0.5)
            stop.set()
            codes = [code for future in futures for code in future.result()]

    print(f"\n{RELOADS} reloads under load: {len(codes)} requests, {len(counter.resets)} resets sent again")
    assert len(codes) > 100
    assert set(codes) == {200}, f"{len([c for c in codes if c != 200])} of {len(codes)} requests failed"
    assert len(counter.resets) <= RELOADS * 4, f"more resets than one per connection per reload: {counter.resets}"


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


def test_ipv6_listeners_pass_nginx_t(tmp_path: Path) -> None:
    text = write_config(EdgeSettings(host="::", internal_host="::1"), tmp_path / "run").read_text()
    assert "listen [::]:8080 reuseport;" in text and "listen [::1]:8081;" in text
