"""``make up`` / ``make down`` / ``make status``: the whole serving stack on one machine, in the background.

MLflow (the project store), Triton (explicit model control over ``.run/triton-repo``, which the
controller fills with champion and canary), the rollout controller, two gateway replicas and the
nginx edge, started in that order, each waited for with bounded, logged retries. Each runs in its
own session, detached from the shell, with its pid (and start time, so a reused pid is never
mistaken for it) in ``.run/<name>.pid`` and its log in ``.run/logs/<name>.log``. ``down`` stops
exactly those processes, in reverse order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Ports:
    """The seed's ports: nginx is the one public entry; everything else stays on loopback."""

    edge: int = 8080
    gateways: tuple[int, ...] = (8000, 8010)
    triton_http: int = 8001
    triton_grpc: int = 8002
    triton_metrics: int = 8003
    mlflow: int = 5000


@dataclass
class Service:
    name: str
    command: list[str]
    env: dict[str, str]
    ready: Callable[[], bool]
    url: str
    ready_timeout_s: float = 120.0
    extra: dict[str, str] = field(default_factory=dict)


def _http_ok(url: str) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            return httpx.get(url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    return probe


def _tcp_open(port: int) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    return probe


def admin_token(run_dir: Path) -> str:
    """GATEWAY_ADMIN_TOKEN from the environment, else a random one kept in ``.run/admin-token`` (0600)."""
    if token := os.environ.get("GATEWAY_ADMIN_TOKEN"):
        return token
    path = run_dir / "admin-token"
    if path.is_file():
        return path.read_text().strip()
    run_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


def services(run_dir: Path, ports: Ports = Ports(), store_dir: Path | None = None) -> list[Service]:
    """The stack, in start order; ``store_dir`` puts MLflow on a scratch store instead of the project's."""
    python = sys.executable
    mlflow_url = f"http://127.0.0.1:{ports.mlflow}"
    base = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "MLFLOW_TRACKING_URI": mlflow_url,
    }
    repository = run_dir / "triton-repo"
    token = admin_token(run_dir)
    gateway_metrics = ",".join(f"http://127.0.0.1:{port}/metrics" for port in ports.gateways)
    stack = [
        Service(
            "mlflow",
            [python, "-m", "registry", "serve"],
            {**{k: v for k, v in base.items() if k != "MLFLOW_TRACKING_URI"}, "REGISTRY_PORT": str(ports.mlflow)}
            | (
                {}
                if store_dir is None
                else {
                    "REGISTRY_BACKEND_STORE_URI": f"sqlite:///{store_dir / 'mlflow.db'}",
                    "REGISTRY_ARTIFACTS_DESTINATION": str(store_dir / "artifacts"),
                }
            ),
            _http_ok(f"{mlflow_url}/health"),
            mlflow_url,
        ),
        Service(
            "triton",
            [
                python,
                "-m",
                "serving.triton",
                "--model-repository",
                str(repository),
                "--run-dir",
                str(run_dir / "triton"),
            ],
            {
                **base,
                "TRITON_HTTP_PORT": str(ports.triton_http),
                "TRITON_GRPC_PORT": str(ports.triton_grpc),
                "TRITON_METRICS_PORT": str(ports.triton_metrics),
            },
            _http_ok(f"http://127.0.0.1:{ports.triton_http}/v2/health/live"),
            f"http://127.0.0.1:{ports.triton_http}",
        ),
        Service(
            "controller",
            [python, "-m", "serving.rollout"],
            {
                **base,
                "CONTROLLER_GATEWAYS": gateway_metrics,
                "CONTROLLER_TRITON_HTTP_URL": f"http://127.0.0.1:{ports.triton_http}",
                "CONTROLLER_TRITON_REPOSITORY": str(repository),
                "CONTROLLER_CACHE_DIR": str(run_dir / "versions"),
                "CONTROLLER_GOLDEN_PATH": str(ROOT / "artifacts" / "golden"),
            },
            lambda: True,
            "(no port)",
        ),
    ]
    for index, port in enumerate(ports.gateways):
        stack.append(
            Service(
                f"gateway-{index + 1}",
                [python, "-m", "serving.gateway"],
                {
                    **base,
                    "GATEWAY_PORT": str(port),
                    "GATEWAY_TRITON_URL": f"http://127.0.0.1:{ports.triton_http}",
                    "GATEWAY_ADMIN_TOKEN": token,
                },
                _http_ok(f"http://127.0.0.1:{port}/healthz"),
                f"http://127.0.0.1:{port}",
            )
        )
    stack.append(
        Service(
            "nginx",
            [python, "-m", "serving.edge", "--run-dir", str(run_dir / "nginx")],
            {
                **base,
                "EDGE_PORT": str(ports.edge),
                "EDGE_UPSTREAMS": ",".join(f"127.0.0.1:{port}" for port in ports.gateways),
            },
            _tcp_open(ports.edge),
            f"http://127.0.0.1:{ports.edge}",
        )
    )
    return stack


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_file(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.pid"


def running_pid(run_dir: Path, name: str) -> int | None:
    """The pid recorded for ``name`` if that very process still runs (same start time), else None."""
    path = _pid_file(run_dir, name)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid = int(record["pid"])
    return pid if _start_time(pid) == record.get("start") else None


class StackError(Exception):
    """A service did not start or become ready; the message names it and its log."""


def start(service: Service, run_dir: Path) -> int:
    """Start one service detached, record its pid, and wait until it is ready."""
    if (pid := running_pid(run_dir, service.name)) is not None:
        log.info("%s already runs (pid %d)", service.name, pid)
        return pid
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / f"{service.name}.log").open("ab") as handle:
        process = subprocess.Popen(
            service.command,
            env=service.env,
            cwd=ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _pid_file(run_dir, service.name).write_text(
        json.dumps({"pid": process.pid, "start": _start_time(process.pid), "url": service.url}) + "\n"
    )
    deadline = time.monotonic() + service.ready_timeout_s
    attempt = 0
    while not service.ready():
        attempt += 1
        if process.poll() is not None:
            raise StackError(
                f"{service.name} exited with code {process.returncode}; see {logs / f'{service.name}.log'}"
            )
        if time.monotonic() > deadline:
            raise StackError(
                f"{service.name} not ready after {service.ready_timeout_s:.0f} s; see {logs / f'{service.name}.log'}"
            )
        if attempt % 10 == 0:
            log.info("waiting for %s (%d s)", service.name, attempt // 5)
        time.sleep(0.2)
    log.info("%-11s ready  %s (pid %d)", service.name, service.url, process.pid)
    return process.pid


def stop(run_dir: Path, name: str, timeout_s: float = 20.0) -> bool:
    """Stop the recorded process group of ``name``; True if something was stopped."""
    pid = running_pid(run_dir, name)
    _pid_file(run_dir, name).unlink(missing_ok=True)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _start_time(pid) is not None and not _is_zombie(pid):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    return True


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def up(run_dir: Path, ports: Ports = Ports()) -> list[Service]:
    stack = services(run_dir, ports)
    if all(running_pid(run_dir, s.name) is None for s in stack):
        # A fresh start: the controller rebuilds Triton's repository from the registry.
        shutil.rmtree(run_dir / "triton-repo", ignore_errors=True)
    (run_dir / "triton-repo").mkdir(parents=True, exist_ok=True)
    try:
        for service in stack:
            start(service, run_dir)
    except BaseException:
        down(run_dir, stack)
        raise
    return stack


def down(run_dir: Path, stack: list[Service] | None = None) -> list[str]:
    names = [s.name for s in (stack if stack is not None else services(run_dir))]
    return [name for name in reversed(names) if stop(run_dir, name)]
