"""Run ``mlflow server`` on the project's store: foreground for ``make mlflow``, background for tests.

The server (the ``mlflow`` CLI and the uvicorn process it spawns) runs in a process group of its own,
stopped as a whole by ``stop()``, on Ctrl-C, and by a small watchdog process when the process that
started it dies, however it dies. The watchdog follows the parent *process*, so a server started from
a worker thread keeps running after that thread ends (``PR_SET_PDEATHSIG`` would kill it then).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from core.processes import ManagedProcess
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


#: A started ``mlflow server``: the leader of its own process group, guarded by a watchdog.
ServerProcess = ManagedProcess


def start(settings: RegistrySettings, log_path: Path | None = None) -> ServerProcess:
    """Start the server in the background and return once it is healthy.

    Its own process group: stop() and the watchdog signal the CLI and its uvicorn worker together, and
    Ctrl-C in a terminal reaches only the parent, which stops the server gracefully.
    """
    _prepare_dirs(settings)
    try:
        server = ManagedProcess(
            server_command(settings),
            env=server_env(),
            log_file=log_path,
            grace_s=STOP_TIMEOUT_S,
            inherit_output=log_path is None,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ServerError(
            f"cannot start mlflow server (or the watchdog that stops it with this process): {exc}"
        ) from exc
    try:
        wait_healthy(settings.server_url, settings.health_attempts, settings.health_interval_s, server.process)
    except BaseException:
        stop(server)
        raise
    return server


def stop(server: ServerProcess, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the server's process group (the CLI exits at once; its uvicorn finishes its requests),
    SIGKILL it after ``timeout_s``; returns once nothing of it runs."""
    server.stop(timeout_s)


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
