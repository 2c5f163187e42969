"""A throwaway PostgreSQL cluster for tests: ``initdb`` in a temp folder, a postmaster on a free loopback port.

The cluster trusts connections from 127.0.0.1 only (no Unix socket, no other interface), so the URI
needs no password: ``postgresql+psycopg2://mlflow@127.0.0.1:PORT/<db>``. PostgreSQL refuses to run as root, so
as root every server command runs as the unprivileged ``postgres`` user (which Debian's package
creates) and the folder is handed to it. The postmaster runs in the foreground as a
``core.processes.ManagedProcess``: should the test process die without its teardown, a watchdog stops
it. ``pg_ctl stop -m fast`` stops it at the end (open connections are cut, nothing is waited for) and
the folder is removed.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from core.processes import ManagedProcess

log = logging.getLogger(__name__)

#: The cluster's superuser, the role every URI of it names.
USER = "mlflow"
#: The DBAPI driver the URIs name (psycopg2-binary is in requirements.in).
DRIVER = "psycopg2"
#: Who runs the server when the tests run as root.
SYSTEM_USER = "postgres"
#: Debian installs the server binaries per major version, off PATH.
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
INSTALL_HINT = (
    "PostgreSQL's server binaries (initdb, pg_ctl, postgres) are not installed; the shared-registry tests "
    "need them. `make install` installs Debian's postgresql package (scripts/system-packages.sh), or run "
    "`apt-get install postgresql` (elsewhere: put the folder holding initdb on PATH)"
)


class PostgresError(Exception):
    """The cluster could not be created, started or stopped; the message says which step and where its log is."""


def bin_dir() -> Path:
    """The folder holding initdb, pg_ctl and postgres: PATH first, else Debian's newest major version."""
    found = shutil.which("initdb")
    if found:
        # Resolved: a symlink on PATH (e.g. /usr/local/bin/initdb) points into the folder with the rest.
        return Path(found).resolve().parent
    candidates = [Path(p) for p in sorted(Path("/").glob(DEBIAN_BIN_GLOB.lstrip("/")), key=_major_version)]
    for candidate in reversed(candidates):
        if all((candidate / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return candidate
    raise PostgresError(INSTALL_HINT)


def _major_version(path: Path) -> int:
    match = re.search(r"/postgresql/(\d+)/", f"{path}/")
    return int(match.group(1)) if match else 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Cluster:
    """A running cluster: where it listens and how to reach it."""

    bin_dir: Path
    data_dir: Path
    port: int
    log_path: Path

    def uri(self, database: str) -> str:
        """The SQLAlchemy URI of ``database``, naming the driver: SQLAlchemy 2.1 maps a bare
        ``postgresql://`` to psycopg 3, while the project installs psycopg2 (MLflow's documented driver)."""
        return f"postgresql+{DRIVER}://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """``createdb name`` and return its URI."""
        _run([str(self.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, name], None)
        return self.uri(name)


def _as_server_user() -> list[str]:
    """The argv prefix that drops root to the ``postgres`` user (empty when not root)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise PostgresError(
            f"running as root, but there is no {SYSTEM_USER!r} user to run PostgreSQL as (it refuses root); "
            "Debian's postgresql package creates it: `apt-get install postgresql`"
        ) from None
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise PostgresError("running as root needs util-linux's setpriv to start PostgreSQL as its own user")
    # setpriv execs the command (no extra process), so signals reach the postmaster itself.
    return [setpriv, f"--reuid={SYSTEM_USER}", f"--regid={SYSTEM_USER}", "--init-groups", "--reset-env", "--"]


def _run(command: list[str], cwd: Path | None, timeout_s: float = 120.0) -> str:
    log.info("$ %s", " ".join(command))
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise PostgresError(f"{' '.join(command)} did not finish within {timeout_s:.0f} s") from exc
    if done.returncode != 0:
        raise PostgresError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def _wait_ready(cluster: Cluster, server: ManagedProcess, timeout_s: float) -> None:
    """Poll ``pg_isready`` with bounded, logged retries until the cluster accepts connections."""
    command = [str(cluster.bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(cluster.port),
               "-U", USER, "-d", "postgres", "-t", "2"]  # fmt: skip
    deadline = time.monotonic() + timeout_s
    attempt = 0
    while True:
        attempt += 1
        if server.poll() is not None:
            raise PostgresError(
                f"postgres exited with code {server.poll()} before accepting connections; "
                f"see {cluster.log_path}:\n{_tail(cluster.log_path)}"
            )
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
        if done.returncode == 0:
            log.info("PostgreSQL ready on 127.0.0.1:%d (attempt %d)", cluster.port, attempt)
            return
        if time.monotonic() > deadline:
            raise PostgresError(
                f"PostgreSQL on 127.0.0.1:{cluster.port} not ready after {timeout_s:.0f} s "
                f"({done.stdout.strip()}); see {cluster.log_path}:\n{_tail(cluster.log_path)}"
            )
        log.info("waiting for PostgreSQL on 127.0.0.1:%d: %s (attempt %d)", cluster.port, done.stdout.strip(), attempt)
        time.sleep(0.2)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _init(bins: Path, root: Path, as_user: list[str]) -> Path:
    data = root / "data"
    # --no-sync and the fsync settings below: a throwaway cluster needs no durability, only speed.
    _run(
        [*as_user, str(bins / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8",
         "--locale=C", "--no-sync", "--no-instructions"],
        root,
    )  # fmt: skip
    # Trust loopback TCP only: no Unix socket is opened, and listen_addresses keeps other interfaces out.
    (data / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")
    return data


def _start(bins: Path, data: Path, port: int, log_path: Path, as_user: list[str]) -> ManagedProcess:
    settings = {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        "unix_socket_directories": "",
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "100",
    }
    options = [item for key, value in settings.items() for item in ("-c", f"{key}={value}")]
    return ManagedProcess(
        [*as_user, str(bins / "postgres"), "-D", str(data), *options],
        log_file=log_path,
        cwd=data.parent,
        grace_s=10.0,
    )


@contextmanager
def cluster(start_attempts: int = 3, ready_timeout_s: float = 60.0) -> Iterator[Cluster]:
    """A running throwaway cluster for the block; stopped (``pg_ctl stop -m fast``) and removed after."""
    bins = bin_dir()
    as_user = _as_server_user()
    # Not pytest's temp folders: they are 0700 root's, and the server user must reach its data folder.
    root = Path(tempfile.mkdtemp(prefix="pytest-postgres-"))
    try:
        if as_user:
            shutil.chown(root, SYSTEM_USER, SYSTEM_USER)
        data = _init(bins, root, as_user)
        log_path = root / "postgres.log"
        for attempt in range(1, start_attempts + 1):
            # The port is free when picked, but another process may take it before the postmaster binds it.
            found = Cluster(bins, data, _free_port(), log_path)
            logged = log_path.stat().st_size if log_path.exists() else 0
            server = _start(bins, data, found.port, log_path, as_user)
            try:
                _wait_ready(found, server, ready_timeout_s)
            except PostgresError as exc:
                server.stop()
                with log_path.open("rb") as handle:
                    handle.seek(logged)
                    bind_failed = b"could not bind" in handle.read()
                if attempt == start_attempts or not bind_failed:
                    raise
                log.warning("PostgreSQL could not bind port %d; trying another (%s)", found.port, exc)
                continue
            break
        try:
            yield found
        finally:
            try:
                _run([*as_user, str(bins / "pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w", "-t", "30"], root)
            finally:
                server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
