"""Server-sent events through the real nginx edge: passed on as they come when the gateway says
``X-Accel-Buffering: no`` (what its event streams say), so a client has the first event long before
the last one is written; and a client that leaves closes the stream towards the gateway too."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serving.edge.launcher import Edge
from serving.edge.settings import EdgeSettings
from serving.triton.launcher import free_ports

#: Seconds between the stand-in's events: far above any scheduling noise, far below the read timeout.
GAP_S = 0.4
EVENTS = 4
#: The stand-in says ``X-Accel-Buffering: no`` (as the gateway's event streams do) when asked with this.
UNBUFFERED = {"X-Test-Unbuffered": "1"}

_STREAMER = f"""
import sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, log = int(sys.argv[1]), sys.argv[2]


class Streamer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        if self.headers.get("X-Test-Unbuffered") == "1":
            self.send_header("X-Accel-Buffering", "no")
        self.end_headers()
        try:
            for index in range({EVENTS}):
                event = ("data: %d\\n\\n" % index).encode()
                self.wfile.write(b"%x\\r\\n%s\\r\\n" % (len(event), event))
                self.wfile.flush()
                time.sleep({GAP_S})
            self.wfile.write(b"0\\r\\n\\r\\n")
            self.wfile.flush()
            outcome = "finished"
        except (BrokenPipeError, ConnectionResetError):
            outcome = "closed"
        with open(log, "a") as file:
            file.write(outcome + "\\n")

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", port), Streamer).serve_forever()
"""


@pytest.fixture()
def streamer(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A stand-in gateway that streams ``EVENTS`` events ``GAP_S`` apart; its log says how each stream ended."""
    (port,) = free_ports(1)
    log = tmp_path / "streams.log"
    process = subprocess.Popen([sys.executable, "-c", _STREAMER, str(port), str(log)])
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    yield port, log
    process.kill()
    process.wait()


@pytest.fixture()
def edge(streamer: tuple[int, Path], tmp_path: Path) -> Iterator[Edge]:
    port, internal = free_ports(2)
    settings = EdgeSettings(port=port, internal_port=internal, upstreams=[f"127.0.0.1:{streamer[0]}"])
    with Edge(settings, tmp_path / "edge") as running:
        yield running


def _arrivals(url: str) -> list[float]:
    started = time.monotonic()
    arrivals = []
    with httpx.stream("POST", url, content=b"{}", headers=UNBUFFERED, timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:"):
                arrivals.append(time.monotonic() - started)
    return arrivals


def test_events_pass_through_unbuffered_when_the_gateway_says_so(edge: Edge) -> None:
    arrivals = _arrivals(f"{edge.url}/v1/chat/completions")

    assert len(arrivals) == EVENTS
    # The first event came while the stand-in was still writing the others (they follow GAP_S apart).
    assert arrivals[-1] - arrivals[0] >= (EVENTS - 1) * GAP_S * 0.8, arrivals


def test_a_client_leaving_a_stream_closes_it_towards_the_gateway(edge: Edge, streamer: tuple[int, Path]) -> None:
    _, log = streamer
    with httpx.stream(
        "POST", f"{edge.url}/v1/chat/completions", content=b"{}", headers=UNBUFFERED, timeout=30
    ) as response:
        first = next(line for line in response.iter_lines() if line.startswith("data:"))
    assert first == "data: 0"

    deadline = time.monotonic() + EVENTS * GAP_S + 5
    while time.monotonic() < deadline and not (log.exists() and log.read_text().strip()):
        time.sleep(0.05)
    # nginx dropped its connection to the gateway when the client left (the gateway then cancels Triton).
    assert log.read_text().split() == ["closed"]
