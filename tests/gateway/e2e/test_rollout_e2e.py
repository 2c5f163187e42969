"""The admin API, reconciling and shadow traffic against a real MLflow registry and a real Triton."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import httpx
import pytest

from registry import events
from registry.state import read_state
from serving.gateway.errors import RegistryNotFoundError, RegistryUnavailableError
from serving.gateway.registry_client import Action, MlflowRegistry
from serving.triton.launcher import free_ports
from tests.gateway.conftest import AUTH
from tests.gateway.e2e.conftest import Gateway, Mlflow, SetRollout
from tests.serving.conftest import GOLDEN_SEED
from tiny_model import shapes

pytestmark = [pytest.mark.triton, pytest.mark.mlflow, pytest.mark.slow]

GOLDEN = [shapes.sample(GOLDEN_SEED, i, category="color") for i in range(4)]


def ask(sample: shapes.Sample) -> dict[str, Any]:
    buffer = io.BytesIO()
    sample.image.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": sample.question}]
    return {"model": "qwen3-vl", "messages": [{"role": "user", "content": content}]}


def wait_until(check: Any, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_a_rollout_through_the_admin_api_moves_the_real_registry(
    gateway: Gateway, mlflow: Mlflow, set_rollout: SetRollout
) -> None:
    set_rollout({"champion": 1, "candidate": 2}, weight=0)
    with httpx.Client(base_url=gateway.url, timeout=60, headers={**AUTH, "X-Actor": "e2e"}) as http:
        assert httpx.post(f"{gateway.url}/admin/pause", timeout=10).status_code == 401

        promoted = http.post("/admin/promote", json={"to": "canary", "weight": 5, "reason": "release 2"})
        assert promoted.status_code == 200, promoted.text
        assert promoted.json()["state"]["aliases"] == {"champion": 1, "canary": 2}
        stepped = http.post("/admin/step", json={"reason": "window clean"})
        assert stepped.json()["state"]["canary_weight"] == 25  # params.yaml's rollout.steps
        assert http.post("/admin/pause", json={"reason": "hold for review"}).json()["state"]["paused"] is True
        refused = http.post("/admin/step", json={})
        assert refused.status_code == 409 and "paused" in refused.json()["error"]["message"]
        assert http.post("/admin/resume").status_code == 200
        wrong = http.post("/admin/weight", json={"weight": 50, "version": 3})
        assert wrong.status_code == 409 and "v3 is not the canary" in wrong.json()["error"]["message"]
        aborted = http.post("/admin/abort", json={"reason": "drill"})
        assert aborted.json()["state"]["aliases"] == {"champion": 1}

    store = mlflow.store()
    assert read_state(store).aliases == {"champion": 1}
    recent = events.history(store, limit=6)
    assert [e.action for e in recent][:5] == ["rollback-canary", "resume", "pause", "step", "promote-canary"]
    assert {e.actor for e in recent[:5]} == {"e2e (gateway admin API)"}
    assert recent[0].reason == "drill"
    # The gateway shows the same history on its status page.
    wait_until(lambda: httpx.get(f"{gateway.url}/status.json").json()["history"][0]["reason"] == "drill", "the history")


def test_mlflow_down_keeps_the_last_split_and_comes_back(
    gateway: Gateway, mlflow: Mlflow, set_rollout: SetRollout
) -> None:
    set_rollout({"champion": 1, "canary": 2}, weight=100)
    mlflow.stop()
    try:
        wait_until(lambda: not httpx.get(f"{gateway.url}/readyz").json()["registry"]["reachable"], "MLflow down")
        ready = httpx.get(f"{gateway.url}/readyz")
        assert ready.status_code == 200
        assert ready.json()["registry"]["note"] == "MLflow is unreachable: serving the last known split"
        response = httpx.post(f"{gateway.url}/v1/chat/completions", json=ask(GOLDEN[0]), timeout=60)
        assert (response.status_code, response.headers["x-model-version"]) == (200, "2")
        refused = httpx.post(f"{gateway.url}/admin/weight", json={"weight": 0}, headers=AUTH, timeout=60)
        assert (refused.status_code, refused.headers["retry-after"]) == (503, "1")
        assert refused.json()["error"]["code"] == "registry_unavailable"
        status = httpx.get(f"{gateway.url}/status.json").json()
        assert status["registry"]["reachable"] is False and status["weight"] == 100
    finally:
        mlflow.start()
    wait_until(lambda: httpx.get(f"{gateway.url}/readyz").json()["registry"]["reachable"], "MLflow back", 60)
    set_rollout({"champion": 1}, weight=0)
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=ask(GOLDEN[0]), timeout=60)
    assert response.headers["x-model-version"] == "1"


def shadow_counts(gateway: Gateway) -> tuple[float, float, float]:
    ok = errors = agreed = 0.0
    for line in httpx.get(f"{gateway.url}/metrics").text.splitlines():
        if line.startswith('gateway_shadow_requests_total{outcome="ok",version="3"}'):
            ok = float(line.rsplit(" ", 1)[1])
        elif line.startswith('gateway_shadow_requests_total{outcome="error",version="3"}'):
            errors = float(line.rsplit(" ", 1)[1])
        elif line.startswith('gateway_shadow_agreement_total{version="3"}'):
            agreed = float(line.rsplit(" ", 1)[1])
    return ok, errors, agreed


def test_shadow_traffic_to_the_candidate(gateway: Gateway, set_rollout: SetRollout) -> None:
    set_rollout({"champion": 1, "candidate": 3}, weight=0)  # the gateway runs with GATEWAY_SHADOW_PERCENT=100
    before = shadow_counts(gateway)
    for sample in GOLDEN:
        response = httpx.post(f"{gateway.url}/v1/chat/completions", json=ask(sample), timeout=60)
        assert (response.status_code, response.headers["x-model-version"]) == (200, "1")
        assert response.json()["choices"][0]["message"]["content"] == sample.answer

    def mirrored() -> bool:
        return shadow_counts(gateway)[0] - before[0] == len(GOLDEN)

    wait_until(mirrored, "the mirrors to finish")
    ok, errors, agreed = (after - earlier for after, earlier in zip(shadow_counts(gateway), before, strict=True))
    # The candidate is the same checkpoint, greedy: it agrees with the champion every time.
    assert (ok, errors, agreed) == (len(GOLDEN), 0, len(GOLDEN))
    set_rollout({"champion": 1}, weight=0)


def test_registry_errors_become_the_gateways(mlflow: Mlflow, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    missing = MlflowRegistry(mlflow.settings.model_copy(update={"tracking_uri": mlflow.url, "model_name": "nope"}))
    assert missing.read_state() is None
    with pytest.raises(RegistryNotFoundError, match="nope"):
        missing.act(Action("pause"), events.Actor(name="t"))
    (dead,) = free_ports(1)
    down = MlflowRegistry(mlflow.settings.model_copy(update={"tracking_uri": f"http://127.0.0.1:{dead}"}))
    with pytest.raises(RegistryUnavailableError, match="MLflow did not answer"):
        down.read_state()
