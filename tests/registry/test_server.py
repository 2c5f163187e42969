"""The MLflow launcher: a server it starts is a server it stops, its whole process group (the CLI and
the uvicorn it spawns), by stop(), and when the process that started it dies, however it dies."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from core.processes import group_members
from registry import server
from registry.settings import RegistrySettings
from tests.conftest import ROOT, as_from_a_terminal

pytestmark = [pytest.mark.mlflow, pytest.mark.slow]

# A parent process that starts MLflow and reports it; the test then kills the parent.
_PARENT = """
import json, sys, time
from pathlib import Path
from registry import server
from registry.settings import RegistrySettings

root = Path(sys.argv[1])
settings = RegistrySettings(
    project_dir=root, port=int(sys.argv[2]), tracking_uri=None, health_attempts=240, model_name="m", experiment="e"
)
running = server.start(settings, log_path=root / "server.log")
print(json.dumps({"pid": running.pid}), flush=True)
time.sleep(600)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _settings(root: Path) -> RegistrySettings:
    return RegistrySettings(
        project_dir=root, port=_free_port(), tracking_uri=None, health_attempts=240, model_name="m", experiment="e"
    )


def _wait_until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"still not true after {timeout_s} s"
        time.sleep(0.2)


def _port_free(port: int) -> bool:
    """Nothing listens on ``port``: a new server could bind it (connections left in TIME_WAIT do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
    return True


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "REGISTRY_"))}
    return {**env, "PYTHONPATH": str(ROOT)}


def test_mlflow_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    port = _free_port()
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(tmp_path), str(port)], stdout=subprocess.PIPE, env=_clean_env(), text=True
    )
    try:
        group = json.loads(parent.stdout.readline())["pid"]  # type: ignore[union-attr]
        # The CLI, the uvicorn it spawned, and the watchdog.
        assert len(group_members(group)) == 3
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
    finally:
        parent.kill()
        parent.wait(timeout=30)

    _wait_until(lambda: not group_members(group), 30)
    _wait_until(lambda: _port_free(port), 10)


def test_ctrl_c_stops_make_mlflow_and_everything_it_started(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **_clean_env(),
        "REGISTRY_PROJECT_DIR": str(tmp_path),
        "REGISTRY_PORT": str(port),
        "REGISTRY_MODEL_NAME": "m",
        "REGISTRY_EXPERIMENT": "e",
        "REGISTRY_HEALTH_ATTEMPTS": "240",
    }
    cli = subprocess.Popen(
        [sys.executable, "-m", "registry", "serve"], env=env, cwd=tmp_path, preexec_fn=as_from_a_terminal
    )
    try:
        _wait_until(lambda: _healthy(port) or cli.poll() is not None, 120)
        (group,) = _child_groups(cli.pid)
        assert group_members(group)
    finally:
        # What a terminal's Ctrl-C does: the server has a group of its own, so only the CLI gets SIGINT.
        cli.send_signal(signal.SIGINT)
        try:
            code = cli.wait(timeout=60)
        except subprocess.TimeoutExpired:
            cli.terminate()  # leave nothing running behind a failed test (its watchdog stops the server)
            cli.wait(timeout=30)
            raise

    assert code == 0
    assert not group_members(group)
    assert _port_free(port)


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _child_groups(parent: int) -> list[int]:
    """Process groups led by children of ``parent`` (the servers it started)."""
    groups = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_bytes().rpartition(b")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == parent and int(fields[2]) == int(entry.name):
                groups.append(int(entry.name))
    return groups


def test_mlflow_started_from_a_worker_thread_outlives_the_thread(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    started: list[server.ServerProcess] = []
    failures: list[BaseException] = []

    def start() -> None:
        try:
            started.append(server.start(settings, log_path=tmp_path / "server.log"))
        except BaseException as exc:
            failures.append(exc)

    worker = threading.Thread(target=start)
    worker.start()
    worker.join()
    assert failures == []
    (running,) = started
    try:
        time.sleep(2.0)

        assert running.process.poll() is None
        assert httpx.get(f"{settings.server_url}/health", timeout=10).status_code == 200
    finally:
        server.stop(running)

    assert not group_members(running.pid)
    assert _port_free(settings.port)
    # Stopped gracefully: uvicorn finished its shutdown rather than being killed in it.
    assert "Application shutdown complete" in (tmp_path / "server.log").read_text()
