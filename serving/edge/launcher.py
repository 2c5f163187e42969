"""Run Debian's nginx as the edge: its own prefix, pid, logs and temp paths under a run folder.

The config is rendered, checked with ``nginx -t`` (a bad one never replaces a running one), and
nginx runs in the foreground as a managed process group, waited for with bounded, logged retries.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from core.processes import ManagedProcess
from serving.edge.config import render
from serving.edge.settings import EdgeSettings

log = logging.getLogger(__name__)

NGINX = "/usr/sbin/nginx"
_TEMP_DIRS = ("body", "proxy", "fastcgi", "uwsgi", "scgi")


class EdgeError(Exception):
    """nginx is missing, its config is refused, or it did not start."""


def nginx_binary() -> str:
    found = shutil.which("nginx") or (NGINX if Path(NGINX).is_file() else None)
    if found is None:
        raise EdgeError("nginx is not installed; run `make install` (Debian package `nginx`)")
    return found


def _worker_user() -> str | None:
    # As root, nginx drops its workers to an unprivileged user; they need the temp folders.
    if os.geteuid() != 0:
        return None
    for name in ("www-data", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    return None


def _reachable_by_others(folder: Path) -> bool:
    """True when every folder above ``folder`` lets other users through (o+x)."""
    return all(parent.stat().st_mode & 0o001 for parent in folder.resolve().parents)


def temp_folder(run_dir: Path, user: str | None) -> Path:
    """Where nginx's workers buffer bodies: under ``run_dir``, unless the workers (another user, when
    nginx starts as root) cannot reach it there, say inside /root; then a folder of its own in /tmp."""
    if user is None or _reachable_by_others(run_dir):
        return run_dir / "tmp"
    digest = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"qwen3-vl-edge-{digest}"


def write_config(settings: EdgeSettings, run_dir: Path) -> Path:
    """Render nginx.conf into ``run_dir`` (with its temp folders) and check it with ``nginx -t``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    run_dir.chmod(0o755)
    user = _worker_user()
    temp = temp_folder(run_dir, user)
    temp.mkdir(parents=True, exist_ok=True)
    temp.chmod(0o755)
    for name in _TEMP_DIRS:
        folder = temp / name
        folder.mkdir(parents=True, exist_ok=True)
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(folder, entry.pw_uid, entry.pw_gid)
    candidate = run_dir / "nginx.conf.new"
    candidate.write_text(render(settings, run_dir, user=user, temp_dir=temp))
    check = subprocess.run(
        [nginx_binary(), "-t", "-q", "-p", str(run_dir), "-c", str(candidate)],
        capture_output=True,
        text=True,
        check=False,
    )
    if check.returncode != 0:
        raise EdgeError(f"nginx refused the rendered config {candidate}: {check.stderr.strip()}")
    config = run_dir / "nginx.conf"
    candidate.replace(config)
    return config


class Edge:
    """One nginx over the gateway replicas; use as a context manager."""

    def __init__(self, settings: EdgeSettings, run_dir: Path, ready_timeout_s: float = 15.0) -> None:
        self.settings = settings
        self.run_dir = run_dir
        self.ready_timeout_s = ready_timeout_s
        self._process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        """The public listener: the OpenAI API and /healthz."""
        return self.settings.url

    @property
    def internal_url(self) -> str:
        """The internal listener: every gateway path (status page, metrics, readiness, admin API)."""
        return self.settings.internal_url

    @property
    def access_log(self) -> Path:
        return self.run_dir / "access.log"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.is_running()

    def __enter__(self) -> Edge:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> Edge:
        config = write_config(self.settings, self.run_dir)
        command = [nginx_binary(), "-p", str(self.run_dir), "-c", str(config)]
        self._process = ManagedProcess(command, log_file=self.run_dir / "nginx.out", grace_s=10.0)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        log.info(
            "nginx edge on %s (internal %s) over %s", self.url, self.internal_url, ", ".join(self.settings.upstreams)
        )
        return self

    def reload(self) -> None:
        """Re-render, check, and reload gracefully (SIGHUP): in-flight requests finish on old workers.

        The old workers close their *idle* client connections at once; a client that sends on one
        at that instant gets a reset before nginx read its request, and should send it again (the
        official OpenAI client does; see the README's edge section).
        """
        if self._process is None or not self._process.is_running():
            raise EdgeError("nginx is not running")
        write_config(self.settings, self.run_dir)
        os.kill(self._process.pid, signal.SIGHUP)

    def stop(self) -> None:
        if self._process is not None:
            # SIGQUIT is nginx's graceful shutdown; SIGTERM (what stop() sends) is its fast one.
            self._process.stop(timeout_s=10.0)
            self._process = None

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        attempt = 0
        while True:
            attempt += 1
            if self._process is not None and self._process.poll() is not None:
                raise EdgeError(f"nginx exited with {self._process.poll()}: {self._error_tail()}")
            try:
                for host, port in (
                    (self.settings.host, self.settings.port),
                    (self.settings.internal_host, self.settings.internal_port),
                ):
                    with socket.create_connection((host, port), timeout=0.5):
                        pass
                return
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise EdgeError(
                        f"nginx not accepting on {self.url} after {self.ready_timeout_s:.0f} s ({exc}): "
                        f"{self._error_tail()}"
                    ) from exc
                log.info("waiting for nginx on %s (attempt %d)", self.url, attempt)
                time.sleep(0.1)

    def _error_tail(self) -> str:
        lines: list[str] = []
        for name in ("error.log", "nginx.out"):
            path = self.run_dir / name
            if path.is_file():
                lines += path.read_text(errors="replace").splitlines()[-10:]
        return "\n".join(lines) or "(no log)"
