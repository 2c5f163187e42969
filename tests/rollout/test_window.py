"""The controller's reading of the gateways' ``/metrics``: over HTTP, a replica at a time."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from serving.gateway.metrics import Metrics
from serving.rollout.window import Scraper, Totals


class Replicas:
    """A server answering ``/<name>`` with that replica's exposition, or with what a test set instead."""

    def __init__(self) -> None:
        self.metrics = {"a": Metrics(), "b": Metrics()}
        self.override: dict[str, tuple[int, bytes]] = {}
        replicas = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.strip("/")
                status, body = replicas.override.get(name) or (200, replicas.metrics[name].exposition())
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture()
def replicas() -> Iterator[Replicas]:
    found = Replicas()
    yield found
    found.server.shutdown()
    found.server.server_close()


def test_a_replica_answering_with_something_else_is_skipped_and_its_baseline_kept(
    replicas: Replicas, caplog: pytest.LogCaptureFixture
) -> None:
    scraper = Scraper([f"{replicas.url}/a", f"{replicas.url}/b"])
    totals = Totals()
    for metrics in replicas.metrics.values():
        for _ in range(100):
            metrics.attempt(2, "ok", 0.05)  # before the canary: not its window
    totals.reset(scraper())

    replicas.metrics["a"].attempt(2, "error")
    replicas.metrics["b"].attempt(2, "ok", 0.05)
    replicas.override["b"] = (200, b"<html><body>502 Bad Gateway</body></html>")  # a proxy's page
    scrapes = scraper()
    totals.add(scrapes)

    assert sorted(scrapes) == [f"{replicas.url}/a"]
    assert scraper.unreachable == [f"{replicas.url}/b"]
    assert "cannot scrape" in caplog.text and "not a gateway's /metrics" in caplog.text
    assert (totals.get(2).requests, totals.get(2).errors) == (1, 1)

    # Back to metrics: b adds what it counted since its last good scrape, not its 100 requests before.
    del replicas.override["b"]
    replicas.metrics["b"].attempt(2, "ok", 0.05)
    totals.add(scraper())
    assert scraper.unreachable == []
    assert (totals.get(2).requests, totals.get(2).errors) == (3, 1)
    assert totals.get(2).latency.sum() == 2
    scraper.close()


def test_a_replica_that_refuses_is_skipped(replicas: Replicas) -> None:
    replicas.override["a"] = (503, b"draining")
    scraper = Scraper([f"{replicas.url}/a", f"{replicas.url}/b"])
    assert sorted(scraper()) == [f"{replicas.url}/b"] and scraper.unreachable == [f"{replicas.url}/a"]
    scraper.close()
