"""``make up`` / ``make down`` / ``make status``: the whole serving stack on one machine, in the background.

MLflow (the project store), Triton (explicit model control over ``.run/triton-repo``, which the
controller fills with champion and canary), the rollout controller, the gateway replicas and the
nginx edge, started in that order, each waited for with bounded, logged retries; then ``up`` waits
until the champion answers a chat request through nginx (with progress), or says there is no
champion yet and the command that makes one. Each service runs in its own session, detached from
the shell, with its pid (and start time, so a reused pid is never mistaken for it) in
``.run/<name>.pid`` and its log in ``.run/logs/<name>.log``. ``down`` stops exactly those
processes, in reverse order, each with its own grace (a gateway drains its requests in flight).

Ports are the services' own settings (``core.ports`` holds the defaults): ``REGISTRY_PORT``,
``TRITON_HTTP_PORT``/``_GRPC_PORT``/``_METRICS_PORT``, ``EDGE_PORT``, ``EDGE_INTERNAL_PORT``, and
``EDGE_UPSTREAMS`` (one gateway replica per ``127.0.0.1:<port>`` entry).
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
from typing import Any

import httpx
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.ports import LOOPBACK, Ports, url
from registry.settings import RegistrySettings
from serving.edge.settings import EdgeSettings
from serving.gateway.drain import drain_limit_s
from serving.gateway.settings import GatewaySettings
from serving.triton.settings import TritonSettings

__all__ = ["ROOT", "Ports", "Service", "StackError", "StackSettings", "down", "services", "start", "stop", "up"]

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
#: What ``up`` recorded: the services in start order, and where each listens.
STACK_FILE = "stack.json"
#: The command that makes the candidate the champion (the registry CLI; README "Registry and promotion").
PROMOTE = "python -m registry promote --to champion"


class StackSettings(BaseSettings):
    """How ``make up`` waits (env prefix ``STACK_``); ports are each service's own settings."""

    model_config = SettingsConfigDict(env_prefix="STACK_", extra="forbid")

    # How long `make up` waits for the champion to answer through nginx (loading a real model takes minutes).
    champion_timeout_s: float = Field(300.0, gt=0)


@dataclass
class Service:
    name: str
    command: list[str]
    env: dict[str, str]
    ready: Callable[[], bool]
    url: str
    ready_timeout_s: float = 120.0
    # SIGTERM, then this long before SIGKILL: a gateway drains its requests in flight first.
    stop_timeout_s: float = 20.0
    extra: dict[str, str] = field(default_factory=dict)


def configured_ports() -> Ports:
    """The ports the services' settings name (their environment variables, else ``core.ports``)."""
    triton, edge = TritonSettings(), EdgeSettings()
    gateways = []
    for upstream in edge.upstreams:
        host, _, port = upstream.rpartition(":")
        if host not in (LOOPBACK, "localhost"):
            raise StackError(
                f"EDGE_UPSTREAMS entry {upstream!r}: `make up` starts the gateway replicas on this machine, "
                f"so each entry is {LOOPBACK}:<port>"
            )
        gateways.append(int(port))
    return Ports(
        edge=edge.port,
        edge_internal=edge.internal_port,
        gateways=tuple(gateways),
        triton_http=triton.http_port,
        triton_grpc=triton.grpc_port,
        triton_metrics=triton.metrics_port,
        mlflow=RegistrySettings().port,
    )


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


def services(run_dir: Path, ports: Ports | None = None, store_dir: Path | None = None) -> list[Service]:
    """The stack, in start order; ``store_dir`` puts MLflow on a scratch store instead of the project's."""
    ports = ports if ports is not None else configured_ports()
    python = sys.executable
    mlflow_url = url(ports.mlflow)
    base = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "MLFLOW_TRACKING_URI": mlflow_url,
    }
    repository = run_dir / "triton-repo"
    token = admin_token(run_dir)
    gateway_metrics = ",".join(f"{url(port)}/metrics" for port in ports.gateways)
    triton_url = url(ports.triton_http)
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
            _http_ok(f"{triton_url}/v2/health/live"),
            triton_url,
        ),
        Service(
            "controller",
            [python, "-m", "serving.rollout"],
            {
                **base,
                "CONTROLLER_GATEWAYS": gateway_metrics,
                "CONTROLLER_TRITON_HTTP_URL": triton_url,
                "CONTROLLER_TRITON_REPOSITORY": str(repository),
                "CONTROLLER_CACHE_DIR": str(run_dir / "versions"),
                "CONTROLLER_GOLDEN_PATH": str(ROOT / "artifacts" / "golden"),
            },
            lambda: True,
            "(no port)",
        ),
    ]
    # SIGTERM drains a gateway: its requests in flight may take two upstream timeouts (canary, then champion).
    upstream_timeout_s = GatewaySettings.model_fields["upstream_timeout_s"].default
    if "GATEWAY_UPSTREAM_TIMEOUT_S" in os.environ:
        upstream_timeout_s = float(os.environ["GATEWAY_UPSTREAM_TIMEOUT_S"])
    for index, port in enumerate(ports.gateways):
        stack.append(
            Service(
                f"gateway-{index + 1}",
                [python, "-m", "serving.gateway"],
                {
                    **base,
                    "GATEWAY_PORT": str(port),
                    "GATEWAY_TRITON_URL": triton_url,
                    "GATEWAY_ADMIN_TOKEN": token,
                },
                _http_ok(f"{url(port)}/healthz"),
                url(port),
                stop_timeout_s=drain_limit_s(upstream_timeout_s) + 10.0,
            )
        )
    stack.append(
        Service(
            "nginx",
            [python, "-m", "serving.edge", "--run-dir", str(run_dir / "nginx")],
            {
                **base,
                "EDGE_PORT": str(ports.edge),
                "EDGE_INTERNAL_PORT": str(ports.edge_internal),
                "EDGE_UPSTREAMS": ",".join(f"{LOOPBACK}:{port}" for port in ports.gateways),
            },
            _tcp_open(ports.edge_internal),
            url(ports.edge),
            extra={"internal": url(ports.edge_internal)},
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
    record = {
        "pid": process.pid,
        "start": _start_time(process.pid),
        "url": service.url,
        "stop_s": service.stop_timeout_s,
    }
    _pid_file(run_dir, service.name).write_text(json.dumps(record | service.extra) + "\n")
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


def _record(run_dir: Path, name: str) -> dict[str, Any]:
    try:
        record = json.loads(_pid_file(run_dir, name).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def stop(run_dir: Path, name: str, timeout_s: float | None = None) -> bool:
    """Stop the recorded process group of ``name`` (SIGTERM, then SIGKILL after its grace); True if
    something was stopped."""
    pid = running_pid(run_dir, name)
    if timeout_s is None:
        timeout_s = float(_record(run_dir, name).get("stop_s", 20.0))
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


def up(run_dir: Path, ports: Ports | None = None) -> list[Service]:
    """Start every service not already running, in order; on a failure, stop what this call started."""
    stack = services(run_dir, ports)
    if all(running_pid(run_dir, s.name) is None for s in stack):
        # A fresh start: the controller rebuilds Triton's repository from the registry.
        shutil.rmtree(run_dir / "triton-repo", ignore_errors=True)
    (run_dir / "triton-repo").mkdir(parents=True, exist_ok=True)
    recorded = {"services": [{"name": s.name, "url": s.url, **s.extra} for s in stack]}
    (run_dir / STACK_FILE).write_text(json.dumps(recorded, indent=2) + "\n")
    try:
        for service in stack:
            start(service, run_dir)
    except BaseException:
        down(run_dir, stack)
        raise
    return stack


def recorded_names(run_dir: Path) -> list[str]:
    """The services ``up`` started, in start order (the default stack's names before any ``up``)."""
    try:
        return [entry["name"] for entry in json.loads((run_dir / STACK_FILE).read_text())["services"]]
    except (OSError, ValueError, KeyError, TypeError):
        return ["mlflow", "triton", "controller", "gateway-1", "gateway-2", "nginx"]


def down(run_dir: Path, stack: list[Service] | None = None) -> list[str]:
    names = [s.name for s in stack] if stack is not None else recorded_names(run_dir)
    return [name for name in reversed(names) if stop(run_dir, name)]


# -- the champion through nginx ---------------------------------------------------------------------


@dataclass(frozen=True)
class Serving:
    """What the gateways say about the champion (their ``/readyz``), and whether nginx answered with it."""

    champion: int | None
    registry_reachable: bool
    answered: bool
    reason: str


def serving_state(gateways: list[str], edge: str, model: str, *, ask: bool = True) -> Serving:
    """Every gateway's readiness; when all are ready (and ``ask``), one chat request through the edge."""
    champion, reachable, reasons = None, False, []
    ready = bool(gateways)
    for gateway in gateways:
        try:
            detail = httpx.get(f"{gateway}/readyz", timeout=2.0).json()
        except (httpx.HTTPError, ValueError) as exc:
            ready = False
            reasons.append(f"{gateway} did not answer ({type(exc).__name__})")
            continue
        champion = detail.get("champion", champion)
        reachable = reachable or bool(detail.get("registry", {}).get("reachable"))
        if not detail.get("ready"):
            ready = False
            reasons.append(str(detail.get("reason")))
    if not ready or not ask:
        return Serving(champion, reachable, False, "; ".join(dict.fromkeys(reasons)) or "ready")
    body = {"model": model, "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 1}
    try:
        response = httpx.post(f"{edge}/v1/chat/completions", json=body, timeout=60.0)
    except httpx.HTTPError as exc:
        return Serving(champion, reachable, False, f"nginx did not answer ({type(exc).__name__})")
    if response.status_code != 200:
        return Serving(champion, reachable, False, f"nginx answered {response.status_code}: {response.text[:200]}")
    return Serving(champion, reachable, True, "answering")


def registry_champion(mlflow_url: str) -> int | None:
    """The champion the registry itself names (what serves, ``rollout.state``), asked of MLflow directly:
    a gateway adopts a promotion only on its next poll, so its word alone lags an action just taken.
    None when the model has no champion or is not registered yet; ``StackError`` when MLflow cannot say."""
    from mlflow.exceptions import MlflowException  # here: mlflow takes seconds to import

    from registry.errors import NotFoundError, RegistryError
    from registry.state import read_state
    from registry.store import Store

    try:
        return read_state(Store(RegistrySettings(tracking_uri=mlflow_url))).aliases.get("champion")
    except NotFoundError:
        return None
    except (RegistryError, MlflowException, OSError) as exc:  # OSError: requests' connection errors
        raise StackError(f"MLflow at {mlflow_url} did not say which version is champion: {exc}") from exc


def no_champion(state: Serving, mlflow_url: str) -> bool:
    """The gateways know no champion and MLflow confirms it names none (so waiting would not help)."""
    if state.champion is not None or not state.registry_reachable:
        return False
    try:
        return registry_champion(mlflow_url) is None
    except StackError as exc:
        log.info("%s; asking the gateways again", exc)
        return False


def wait_for_champion(stack: list[Service], timeout_s: float, poll_s: float = 0.5) -> Serving:
    """Until the champion answers through nginx, or the registry is known to name none (the gateways
    and MLflow agree); bounded, with a progress line every few seconds. ``StackError`` when the time
    runs out."""
    gateways = [s.url for s in stack if s.name.startswith("gateway-")]
    edge = next(s.url for s in stack if s.name == "nginx")
    mlflow_url = next(s.url for s in stack if s.name == "mlflow")
    model = RegistrySettings().model_name
    started = time.monotonic()
    said = 0.0
    while True:
        state = serving_state(gateways, edge, model)
        if state.answered or no_champion(state, mlflow_url):
            return state
        waited = time.monotonic() - started
        if waited > timeout_s:
            raise StackError(
                f"the champion did not answer through nginx within {timeout_s:.0f} s (STACK_CHAMPION_TIMEOUT_S): "
                f"{state.reason}; see the controller's and Triton's logs under .run/logs/. The stack stays up; "
                "`make down` stops it"
            )
        if waited - said >= 5.0:
            said = waited
            what = f"champion v{state.champion}" if state.champion is not None else "the registry"
            log.info("waiting for %s to answer through nginx (%.0f s): %s", what, waited, state.reason)
        time.sleep(poll_s)


def no_champion_advice(mlflow_url: str) -> str:
    """What to run when the registry names no champion: the candidate's promotion."""
    return (
        f"no champion yet: promote the candidate with `MLFLOW_TRACKING_URI={mlflow_url} {PROMOTE}` "
        "(in the activated venv; `python -m registry status` lists the candidate); the gateways serve it "
        "as soon as Triton has loaded it"
    )
