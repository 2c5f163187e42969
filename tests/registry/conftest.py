"""One real MLflow server per test session and backend; each test gets its own model name.

The server runs on each backend store a team uses: ``sqlite`` (a file in the session's temp folder, the
one-machine default) and ``postgresql`` (a database of a throwaway cluster, what several replicas
share), with artifacts in a temp folder either way. Every test that uses the server runs once per
backend (``[sqlite]``, ``[postgresql]``); the PostgreSQL half is marked ``slow``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from core.manifest import manifest_digest, model_digests
from pipelines.register import RegisterInputs
from registry import server
from registry.events import Actor
from registry.settings import RegistrySettings
from registry.store import Store
from tests.registry import postgres

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """name: "qwen3-vl"
backend: "python"
max_batch_size: 8
input [{ name: "messages" data_type: TYPE_STRING dims: [1] }]
output [{ name: "answer" data_type: TYPE_STRING dims: [1] }]
version_policy: { latest: { num_versions: 1 } }
model_warmup [{ name: "w" batch_size: 1 inputs { key: "messages" value: {
  data_type: TYPE_STRING dims: [1] input_data_file: "messages.bin" } } }]
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_CLUSTER = pytest.StashKey[postgres.Cluster]()


def postgres_cluster(config: pytest.Config) -> postgres.Cluster:
    """The session's PostgreSQL cluster, started on first use and stopped when the session ends.

    Kept on the config rather than in a fixture so that every conftest that reuses ``mlflow_server``
    shares one cluster; its cleanup runs after every fixture's teardown, so the servers on it stop first.
    """
    if _CLUSTER not in config.stash:
        try:
            postgres.bin_dir()
        except postgres.PostgresError as exc:
            pytest.fail(str(exc), pytrace=False)  # CI installs it: a missing server is an error, never a skip
        stack = contextlib.ExitStack()
        config.stash[_CLUSTER] = stack.enter_context(postgres.cluster())
        config.add_cleanup(stack.close)
    return config.stash[_CLUSTER]


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)]


@pytest.fixture(scope="session", params=BACKENDS)
def mlflow_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegistrySettings]:
    """A real ``mlflow server`` (one worker) on a free port over the backend store of ``request.param``;
    settings point at it."""
    root = tmp_path_factory.mktemp(f"mlflow-server-{request.param}")
    store_uri = None  # sqlite in ``root``: RegistrySettings' own default
    if request.param == "postgresql":
        store_uri = postgres_cluster(request.config).create_database(f"mlflow_{uuid.uuid4().hex[:8]}")
    base = RegistrySettings(
        project_dir=root,
        port=_free_port(),
        tracking_uri=None,
        backend_store_uri=store_uri,
        health_attempts=120,
        model_name="qwen3-vl",
        experiment="qwen3-vl-pipeline",
    )
    with server.running(base, log_path=root / "server.log") as url:
        yield base.model_copy(update={"tracking_uri": url})


@pytest.fixture
def settings(mlflow_server: RegistrySettings) -> RegistrySettings:
    """The session server, with a registered model and experiments of this test's own."""
    tag = uuid.uuid4().hex[:8]
    return mlflow_server.model_copy(update={"model_name": f"qwen3-vl-{tag}", "experiment": f"pipeline-{tag}"})


@pytest.fixture
def store(settings: RegistrySettings) -> Store:
    return Store(settings)


@pytest.fixture
def actor() -> Actor:
    return Actor(name="tester")


def cli_env(settings: RegistrySettings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "GITHUB_", "MLFLOW_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        MLFLOW_TRACKING_URI=str(settings.tracking_uri),
        REGISTRY_MODEL_NAME=settings.model_name,
        REGISTRY_EXPERIMENT=settings.experiment,
        USER="cli-tester",
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="2",
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
        MLFLOW_DISABLE_TELEMETRY="true",
    )
    return env


def write_project(
    root: Path, *, passed: bool = True, accuracy: float = 0.9, weights: bytes = b"w1", git: bool = False
) -> RegisterInputs:
    """The upstream contract in small: params, dvc.lock, stage metrics and a packaged Triton model."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(
        "model:\n  source: builtin:tiny-qwen3-vl\nquantize:\n  method: bnb-nf4\n  skip_modules: [lm_head]\n"
        "package:\n  model_name: qwen3-vl\n  version: 1\n"
    )
    (root / "dvc.lock").write_text(f"schema: '2.0'\nstages: {{validate: {{weights: {weights!r}}}}}\n")
    metrics = root / "metrics"
    metrics.mkdir(exist_ok=True)
    (metrics / "quantize.json").write_text(json.dumps({"method": "bnb-nf4", "accuracy": accuracy, "bytes": 10}))
    model_dir = root / "triton-models" / "qwen3-vl-v1"
    version = model_dir / "1"
    (version / "tokenizer").mkdir(parents=True, exist_ok=True)
    (version / "model.py").write_text("# python backend\n")
    (version / "model.safetensors").write_bytes(weights * 64)
    (version / "tokenizer" / "tokenizer.json").write_text("{}")
    (model_dir / "warmup").mkdir(exist_ok=True)
    (model_dir / "warmup" / "messages.bin").write_bytes(b"\x02\x00\x00\x00hi")
    (model_dir / "config.pbtxt").write_text(CONFIG)
    files = [p for p in version.rglob("*") if p.is_file()]
    package = {
        "model": "qwen3-vl",
        "triton_model": "qwen3-vl-v1",
        "version": 1,
        "bytes": sum(p.stat().st_size for p in files),
        "files": len(files),
    }
    (metrics / "package.json").write_text(json.dumps(package))
    validate = {
        "model": "qwen3-vl-v1",
        "version": 1,
        "served_digest": manifest_digest(model_digests(model_dir, "1")),
        "accuracy": accuracy,
        "reference_accuracy": 0.92,
        "drop": round(0.92 - accuracy, 4),
        "per_category": {"color": accuracy, "shape": accuracy, "count": accuracy},
        "config_errors": 0 if passed else 2,
        "questions": 1,
        "passed": passed,
        "failures": [] if passed else ["accuracy below the gate"],
    }
    (metrics / "validate.json").write_text(json.dumps(validate))
    (metrics / "base_model.json").write_text(json.dumps({"accuracy": 0.92, "bytes": 20}))
    golden = root / "artifacts" / "golden"
    (golden / "images").mkdir(parents=True, exist_ok=True)
    (golden / "golden.jsonl").write_text('{"id": "q1", "image": "images/q1.png", "question": "?", "answer": "red"}\n')
    (golden / "images" / "q1.png").write_bytes(b"\x89PNG fixture")
    if git:
        run = ["git", "-C", str(root), "-c", "user.email=t@example.com", "-c", "user.name=t"]
        subprocess.run([*run, "init", "-q"], check=True)
        subprocess.run([*run, "add", "-A"], check=True)
        subprocess.run([*run, "commit", "-qm", "fixture"], check=True)
    return RegisterInputs(
        params=root / "params.yaml",
        lock=root / "dvc.lock",
        validate_metrics=metrics / "validate.json",
        package_metrics=metrics / "package.json",
        quantize_metrics=metrics / "quantize.json",
        other_metrics=(metrics / "base_model.json",),
        triton_repo=root / "triton-models",
        golden=golden,
    )


@pytest.fixture
def make_project(tmp_path: Path) -> Callable[..., RegisterInputs]:
    """Build a fresh fake project per call (``weights`` varies the artifact bytes)."""
    counter = iter(range(1000))

    def build(**kwargs: object) -> RegisterInputs:
        return write_project(tmp_path / f"project-{next(counter)}", **kwargs)  # type: ignore[arg-type]

    return build
