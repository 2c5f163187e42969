"""Run ``mlflow server`` on the project's store: foreground for ``make mlflow``, background for tests."""

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
from pathlib import Path

import httpx

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


def start(settings: RegistrySettings, log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """Start the server in the background and return once it is healthy."""
    _prepare_dirs(settings)
    output = log_path.open("ab") if log_path is not None else None
    process = subprocess.Popen(
        server_command(settings),
        env=server_env(),
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
        start_new_session=True,
    )
    if output is not None:
        output.close()
    try:
        wait_healthy(settings.server_url, settings.health_attempts, settings.health_interval_s, process)
    except ServerError:
        stop(process)
        raise
    return process


def stop(process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        log.warning("mlflow server (pid %d) ignored SIGTERM for %.0f s; killing it", process.pid, timeout_s)
        # Its uvicorn worker holds the port too: kill the whole session started for it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def running(settings: RegistrySettings, log_path: Path | None = None) -> Iterator[str]:
    """A healthy server for the duration of the block; yields its URL."""
    process = start(settings, log_path)
    try:
        yield settings.server_url
    finally:
        stop(process)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve_forever(settings: RegistrySettings) -> int:
    """Foreground server for ``make mlflow``: returns its exit code, stops it on Ctrl-C or SIGTERM."""
    # The server runs in its own session, so a SIGTERM to us must be passed on, not leave it orphaned.
    signal.signal(signal.SIGTERM, _interrupt)
    process = start(settings)
    log.info("MLflow UI and API at %s (store %s); Ctrl-C stops it", settings.server_url, settings.store_uri)
    try:
        return process.wait()
    except KeyboardInterrupt:
        stop(process)
        return 0
