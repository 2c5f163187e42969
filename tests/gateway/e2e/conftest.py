"""Real services for the end-to-end tests, once per session: Triton serving three tiny-model versions,
an MLflow server whose registered model ``qwen3-vl`` names them, and the gateway as its own process
(``python -m serving.gateway``, uvicorn with uvloop and httptools) on a free port."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from registry import server
from registry.settings import RegistrySettings
from registry.state import GENERATION_TAG, PAUSED_TAG, STATE_TAG, WEIGHT_TAG, read_state, state_tag
from registry.store import Store
from serving.triton.launcher import TritonServer, free_ports
from serving.triton.settings import TritonSettings
from tests.conftest import ROOT
from tests.gateway.conftest import AUTH, TOKEN
from tests.serving.conftest import BACKEND, serving_params

MODEL = "qwen3-vl"
VERSIONS = (1, 2, 3)
# Room for long answers: the streaming tests ban the end-of-sequence token and stream every token.
MAX_NEW_TOKENS = 32


@pytest.fixture(scope="session")
def triton(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """Triton serving ``qwen3-vl-v1``, ``-v2`` and ``-v3``, each packaged from the committed tiny checkpoint."""
    from serving.triton.packaging import package

    repository = tmp_path_factory.mktemp("gateway-triton-models")
    for version in VERSIONS:
        package(
            tiny_checkpoint, BACKEND, repository, MODEL, serving_params(version=version, max_new_tokens=MAX_NEW_TOKENS)
        )
    http, grpc, metrics = free_ports(3)
    settings = TritonSettings(http_port=http, grpc_port=grpc, metrics_port=metrics, exit_timeout_secs=1)
    run_dir = tmp_path_factory.mktemp("gateway-triton-run")
    names = [f"{MODEL}-v{version}" for version in VERSIONS]
    with TritonServer(repository, settings, run_dir=run_dir, load_models=names) as running:
        yield running


@dataclass
class Mlflow:
    """The session's MLflow server; ``stop``/``start`` take it down and bring it back on the same port."""

    settings: RegistrySettings
    log_path: Path
    process: server.ServerProcess | None = None

    @property
    def url(self) -> str:
        return self.settings.server_url

    def start(self) -> None:
        self.process = server.start(self.settings, self.log_path)

    def stop(self) -> None:
        if self.process is not None:
            server.stop(self.process)
            self.process = None

    def store(self) -> Store:
        return Store(self.settings.model_copy(update={"tracking_uri": self.url}))


@pytest.fixture(scope="session")
def mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mlflow]:
    """A real ``mlflow server`` with ``qwen3-vl`` versions 1-3 registered."""
    root = tmp_path_factory.mktemp("gateway-mlflow")
    (port,) = free_ports(1)
    settings = RegistrySettings(
        project_dir=root, port=port, tracking_uri=None, health_attempts=240, model_name=MODEL, experiment="gateway-e2e"
    )
    service = Mlflow(settings, root / "server.log")
    service.start()
    try:
        client = service.store().client
        client.create_registered_model(MODEL)
        # A version's source must lie under a run's artifacts; nothing is served from it here (Triton
        # already holds the packaged folders), so the run stays empty.
        run = client.create_run(client.create_experiment("gateway-e2e-builds"))
        client.set_terminated(run.info.run_id)
        for version in VERSIONS:
            source = f"{run.info.artifact_uri}/{MODEL}-v{version}"
            client.create_model_version(MODEL, source=source, run_id=run.info.run_id)
        yield service
    finally:
        service.stop()


def _die_with_parent() -> None:
    # A crashed test run must not leave a gateway listening.
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(1, signal.SIGTERM)


@dataclass
class Gateway:
    url: str
    log_path: Path
    process: subprocess.Popen[bytes]

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def gateway(triton: TritonServer, mlflow: Mlflow, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """``python -m serving.gateway`` against the session's Triton and MLflow; ready when it returns."""
    (port,) = free_ports(1)
    log_path = tmp_path_factory.mktemp("gateway-run") / "gateway.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "REGISTRY_", "MLFLOW_", "TRITON_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        GATEWAY_PORT=str(port),
        GATEWAY_ADMIN_TOKEN=TOKEN,
        GATEWAY_TRITON_URL=triton.http_url,
        GATEWAY_REGISTRY_POLL_S="0.2",
        GATEWAY_TRITON_POLL_S="0.2",
        GATEWAY_SHADOW_PERCENT="100",
        GATEWAY_STATUS_WINDOW_S="3600",
        GATEWAY_UPSTREAM_TIMEOUT_S="30",
        MLFLOW_TRACKING_URI=mlflow.url,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        MLFLOW_HTTP_REQUEST_TIMEOUT="3",
        REGISTRY_MODEL_NAME=MODEL,
        REGISTRY_EXPERIMENT="gateway-e2e",
        # params.yaml's rollout.steps, for /admin/step without steps
        REGISTRY_PROJECT_DIR=str(ROOT),
    )
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "serving.gateway"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
    running = Gateway(f"http://127.0.0.1:{port}", log_path, process)
    try:
        _wait_listening(running)
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_listening(gateway: Gateway, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if gateway.process.poll() is not None:
            pytest.fail(f"the gateway exited with {gateway.process.returncode}:\n{gateway.log_tail()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{gateway.url}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    pytest.fail(f"the gateway did not listen within {timeout_s} s:\n{gateway.log_tail()}")


SetRollout = Callable[..., None]


@pytest.fixture
def set_rollout(mlflow: Mlflow, gateway: Gateway) -> SetRollout:
    """``set_rollout(aliases, weight, paused=False)``: put the registry in a state (as a release would
    have), bump the generation, and wait until the gateway serves it with its versions ready."""

    def apply(aliases: dict[str, int], weight: int = 0, paused: bool = False) -> None:
        store = mlflow.store()
        client, current = store.client, read_state(store)
        for alias in set(current.mlflow_aliases or current.aliases) - set(aliases):
            client.delete_registered_model_alias(MODEL, alias)
        for alias, version in aliases.items():
            client.set_registered_model_alias(MODEL, alias, str(version))
        client.set_registered_model_tag(MODEL, WEIGHT_TAG, str(weight))
        client.set_registered_model_tag(MODEL, PAUSED_TAG, str(paused).lower())
        generation = current.generation + 1
        # What serves is rollout.state (the aliases alone are what MLflow shows): written as an action would.
        client.set_registered_model_tag(MODEL, STATE_TAG, state_tag(MODEL, aliases, weight, generation))
        client.set_registered_model_tag(MODEL, GENERATION_TAG, str(generation))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = httpx.get(f"{gateway.url}/admin/state", headers=AUTH, timeout=5).json()
            if state["generation"] == generation and set(aliases.values()) <= set(state["ready_versions"]):
                return
            time.sleep(0.1)
        pytest.fail(f"the gateway did not reach generation {generation}: {state}\n{gateway.log_tail()}")

    return apply
