"""What nginx's public listener serves on the running stack: the OpenAI API and /healthz, nothing else.
The status page (history, actors, injected faults), /metrics, /readyz (Triton's errors, internal
addresses) and the admin API are 404 there, however the path is spelled, and reachable on the
internal listener, which listens on loopback."""

from __future__ import annotations

import httpx
import pytest

from tests.stack_fixture import MODEL, Stack, question

pytestmark = [pytest.mark.slow, pytest.mark.triton, pytest.mark.mlflow]

INTERNAL = ["/", "/status.json", "/metrics", "/readyz", "/openapi.json", "/admin/state", "/admin/faults"]
DISGUISED = [
    "/v1/../status.json",
    "/v1/%2e%2e/metrics",
    "/v1/chat/completions/../../readyz",
    "/healthz/../admin/state",
    "//metrics",
    "/v1/models/../../",
    "/%76%31/../admin/state",
]


def test_the_public_port_serves_the_openai_api_and_healthz_only(stack: Stack) -> None:
    with httpx.Client(base_url=stack.edge_url, timeout=60) as client:
        assert client.post("/v1/chat/completions", json=question(0)).status_code == 200
        assert client.get("/v1/models").json()["data"][0]["id"] == MODEL
        assert client.get("/healthz").status_code == 200
        for path in INTERNAL + DISGUISED:
            response = client.get(path)
            assert response.status_code == 404, (path, response.text[:200])
            assert response.json()["error"]["code"] == "not_found"
            assert "127.0.0.1" not in response.text


def test_the_internal_port_serves_the_operators_pages(stack: Stack) -> None:
    with httpx.Client(base_url=stack.internal_url, timeout=60) as client:
        assert client.get("/readyz").json()["ready"] is True
        assert "gateway_requests_total" in client.get("/metrics").text
        assert client.get("/status.json").status_code == 200
        assert "<html" in client.get("/").text.lower()
        assert client.get("/admin/state").status_code == 401  # reachable, and still behind its token
