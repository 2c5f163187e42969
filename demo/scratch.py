"""The whole serving stack on free ports over a scratch registry, with the last `dvc repro` build as champion.

Used by the journey (``make demo``) and the benchmarks (``make bench``): MLflow on a store of its
own under ``run_dir``, Triton, the controller, two gateways and nginx; build 1 (what ``dvc repro``
validated under ``triton-models/``) registered with the register stage's own command and promoted
to champion; returns once both gateways serve it. Everything stops when the block ends.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from core.processes import GroupWatchdog
from registry import rollout
from registry.events import Actor
from registry.settings import RegistrySettings
from registry.store import Store
from serving.stack import ROOT, Ports, admin_token, down, services, start
from serving.triton.launcher import free_ports

log = logging.getLogger(__name__)


class ScratchError(Exception):
    """A step did not happen in time or a command failed; the message says which and where to look."""


@dataclass(frozen=True)
class Scratch:
    run_dir: Path
    ports: Ports
    store: Store
    env: dict[str, str]
    token: str
    actor: Actor

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.edge}"

    @property
    def gateway_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports.gateways]

    @property
    def triton_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.triton_http}"

    def admin(self, method: str, path: str, json: object = None) -> None:
        """Call the admin API on every gateway replica (faults are per replica)."""
        for url in self.gateway_urls:
            response = httpx.request(
                method, f"{url}{path}", json=json, headers={"Authorization": f"Bearer {self.token}"}, timeout=10
            )
            response.raise_for_status()


def wait_for(what: str, check: Callable[[], bool], timeout_s: float, poll_s: float = 0.25) -> float:
    """Seconds until ``check()`` holds; ``ScratchError`` naming ``what`` after ``timeout_s``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise ScratchError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)
    return time.monotonic() - started


def run(command: list[str], env: dict[str, str], what: str, cwd: Path = ROOT) -> str:
    """Run a command, or raise ``ScratchError`` with the end of its output."""
    log.info("$ %s", " ".join(command))
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ScratchError(f"{what} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def register_build(env: dict[str, str], out: Path, build: Path = ROOT) -> None:
    """Register the build `dvc repro` validated in ``build`` (a checkout), with the register stage's own command."""
    run(
        [
            sys.executable, "-m", "pipelines.register", "--params", "params.yaml", "--lock", "dvc.lock",
            "--validate", "metrics/validate.json", "--package", "metrics/package.json",
            "--quantize", "metrics/quantize.json", "--metrics", "metrics/base_model.json",
            "--triton-repo", "triton-models", "--golden", "artifacts/golden", "--out", str(out),
        ],
        {**env, "PYTHONPATH": str(build)},
        "registering the build",
        cwd=build,
    )  # fmt: skip


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def scratch_stack(
    run_dir: Path,
    actor: Actor,
    timings: dict[str, float] | None = None,
    build: Path = ROOT,
    service_env: dict[str, dict[str, str]] | None = None,
) -> Iterator[Scratch]:
    """The stack with build 1 (of the checkout ``build``) as champion, serving; stopped when the block ends.

    ``service_env``: settings for its services by name (``ROLLOUT_*`` for the controller, ``EDGE_*`` for nginx).
    """
    timings = timings if timings is not None else {}
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "triton-repo").mkdir(parents=True)
    http, grpc, metrics, mlflow, edge, internal, gw1, gw2 = free_ports(8)
    ports = Ports(
        edge=edge,
        edge_internal=internal,
        gateways=(gw1, gw2),
        triton_http=http,
        triton_grpc=grpc,
        triton_metrics=metrics,
        mlflow=mlflow,
    )
    stack = services(run_dir, ports, store_dir=run_dir / "mlflow")
    for service in stack:
        service.env.update((service_env or {}).get(service.name, {}))
    mlflow_url = f"http://127.0.0.1:{ports.mlflow}"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MLFLOW_TRACKING_URI": mlflow_url,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    scratch = Scratch(
        run_dir, ports, Store(RegistrySettings(tracking_uri=mlflow_url)), env, admin_token(run_dir), actor
    )
    # Unlike `make up`'s, a scratch stack lives only as long as this process: should it die even by
    # SIGKILL, each service's watchdog stops that service's group.
    watchdogs: list[GroupWatchdog] = []
    try:
        t0 = time.monotonic()
        for service in stack:
            watchdogs.append(GroupWatchdog(start(service, run_dir), grace_s=10.0, join=False))
        timings["stack_up_s"] = round(time.monotonic() - t0, 1)
        t0 = time.monotonic()
        register_build(env, run_dir / "register-build-1.json", build)
        rollout.promote_to_champion(scratch.store, actor)
        wait_for("the gateways to serve the champion", lambda: all(_ready(u) for u in scratch.gateway_urls), 120)
        timings["champion_serving_s"] = round(time.monotonic() - t0, 1)
        yield scratch
    finally:
        for watchdog in watchdogs:
            watchdog.release()
        down(run_dir, stack)
