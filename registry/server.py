"""Run ``mlflow server`` on the project's store: foreground for ``make mlflow``, background for tests.

The server (the ``mlflow`` CLI and the uvicorn process it spawns) runs in a process group of its own,
stopped as a whole by ``stop()``, on Ctrl-C, and by a small watchdog process when the process that
started it dies, however it dies. The watchdog follows the parent *process*, so a server started from
a worker thread keeps running after that thread ends (``PR_SET_PDEATHSIG`` would kill it then).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from core.processes import GroupWatchdog, group_members, kill_group
from registry.errors import ServerError
from registry.settings import RegistrySettings

log = logging.getLogger(__name__)


def server_command(settings: RegistrySettings) -> list[str]:
    """The ``mlflow server`` argv: one worker, proxied artifacts, the same store as the embedded default."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--backend-store-uri",
        settings.store_uri,
        "--serve-artifacts",
        "--artifacts-destination",
        str(settings.artifacts_dir),
        # Each extra worker is a full MLflow app (hundreds of MB); one is plenty for one team.
        "--workers",
        "1",
    ]


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    # The job runner spawns its own worker pool (about 2 GB of RSS) for features we do not use.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    # A tracking URI inherited from the caller would make the server try to talk to itself.
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def wait_healthy(url: str, attempts: int, interval_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``/health`` with bounded, logged retries; raise ServerError when it never answers."""
    last_error = "no answer"
    for attempt in range(1, attempts + 1):
        if process is not None and process.poll() is not None:
            raise ServerError(
                f"mlflow server exited with code {process.returncode} before {url} became healthy; "
                "see its log above (a port already in use is the usual cause)"
            )
        try:
            response = httpx.get(f"{url}/health", timeout=2.0)
            if response.status_code == 200:
                log.info("MLflow is healthy at %s (attempt %d)", url, attempt)
                return
            last_error = f"HTTP {response.status_code}"
        except httpx.TransportError as exc:
            last_error = type(exc).__name__
        log.info("waiting for MLflow at %s: %s (attempt %d/%d)", url, last_error, attempt, attempts)
        time.sleep(interval_s)
    raise ServerError(f"MLflow at {url} not healthy after {attempts} attempts (last: {last_error})")


def _prepare_dirs(settings: RegistrySettings) -> None:
    settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
    if settings.store_uri.startswith("sqlite:///"):
        Path(settings.store_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


#: Seconds the server gets to exit on SIGTERM before its process group is killed.
STOP_TIMEOUT_S = 15.0


@dataclass
class ServerProcess:
    """A started ``mlflow server``: the leader of its own process group, and the watchdog that guards it."""

    process: subprocess.Popen[bytes]
    watchdog: GroupWatchdog | None

    @property
    def pid(self) -> int:
        """The server's pid, also its process group id."""
        return self.process.pid

    def wait(self) -> int:
        return self.process.wait()


def start(settings: RegistrySettings, log_path: Path | None = None) -> ServerProcess:
    """Start the server in the background and return once it is healthy."""
    _prepare_dirs(settings)
    output = log_path.open("ab") if log_path is not None else None
    try:
        process = subprocess.Popen(
            server_command(settings),
            env=server_env(),
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
            stdin=subprocess.DEVNULL,
            # A group of its own: stop() and the watchdog signal the CLI and its uvicorn together, and
            # Ctrl-C in a terminal reaches only the parent, which stops the server gracefully.
            process_group=0,
        )
    finally:
        if output is not None:
            output.close()
    try:
        watchdog = GroupWatchdog(process.pid, STOP_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        kill_group(process.pid)
        process.wait()
        raise ServerError(f"cannot start the watchdog that stops MLflow with this process: {exc}") from exc
    server = ServerProcess(process, watchdog)
    try:
        wait_healthy(settings.server_url, settings.health_attempts, settings.health_interval_s, process)
    except BaseException:
        stop(server)
        raise
    return server


def stop(server: ServerProcess, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the server's process group, SIGKILL it after ``timeout_s``; leaves nothing of it running."""
    process = server.process
    # From here on stop() is in charge: the watchdog would kill uvicorn as soon as the CLI exits.
    if server.watchdog is not None:
        server.watchdog.release()
        server.watchdog = None
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        # The CLI exits at once; its uvicorn finishes its requests and shuts down: wait for both.
        deadline = time.monotonic() + timeout_s
        while process.poll() is None or group_members(process.pid):
            if time.monotonic() >= deadline:
                log.warning("mlflow server (pid %d) ignored SIGTERM for %.0f s; killing it", process.pid, timeout_s)
                break
            time.sleep(0.1)
    if group_members(process.pid):
        kill_group(process.pid)
    process.wait()
    # A killed worker takes a moment to go (and to free the port): return once it has.
    deadline = time.monotonic() + 10
    while group_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)


@contextmanager
def running(settings: RegistrySettings, log_path: Path | None = None) -> Iterator[str]:
    """A healthy server for the duration of the block; yields its URL."""
    server = start(settings, log_path)
    try:
        yield settings.server_url
    finally:
        stop(server)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve_forever(settings: RegistrySettings) -> int:
    """Foreground server for ``make mlflow``: returns its exit code, stops it on Ctrl-C, SIGTERM or SIGHUP."""
    # The server runs in its own process group, so a signal to us must be passed on, not leave it orphaned.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    server = None
    try:
        server = start(settings)
        log.info("MLflow UI and API at %s (store %s); Ctrl-C stops it", settings.server_url, settings.store_uri)
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if server is not None:
            stop(server)
