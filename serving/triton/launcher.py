"""Start, wait for and stop the ``tritonserver`` binary that ships inside the nvidia-pytriton wheel.

The wheel's server only runs Python-backend models, and only when the backend folder sits next to
the stub built for the running interpreter, the wheel's bundled libraries and ``libpython`` are on
``LD_LIBRARY_PATH``, and the venv's ``bin`` leads ``PATH`` (the stub imports the venv's packages).
This module sets that up in a run folder, the way ``pytriton.triton`` does, without pytriton's proxy.

A server started here is stopped with its whole process group (the backend stubs included) by
``stop()``, and by a small watchdog process when the process that started it dies, however it dies.
The watchdog follows the parent *process*: unlike ``PR_SET_PDEATHSIG``, which fires when the thread
that forked exits, it is safe for a server started from a worker thread.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import functools
import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from core.processes import GroupWatchdog, group_members
from serving.triton.settings import TritonSettings

logger = logging.getLogger(__name__)

_LOG_TAIL_LINES = 40
# A GPU build of Triton logs this error at every start on a machine without a CUDA driver: server
# init creates its CUDA block manager unconditionally (core src/server.cc, CudaBlockManager::Create),
# and that fails when libcuda.so cannot be loaded. No option skips it, so it is dropped from the log
# there; every other line, errors included, is kept.
_CPU_ONLY_NOISE = re.compile(rb'^E\d{4} [^\]]*\] "?CudaDriverHelper has not been initialized\.')


class TritonError(Exception):
    """Base of the launcher's errors."""


class TritonEnvironmentError(TritonError):
    """This interpreter or venv cannot run the bundled Triton."""


class TritonStartError(TritonError):
    """The server exited or never became ready; the message carries the end of its log."""


def check_environment() -> None:
    """Refuse early, with the fix, what would otherwise surface as an obscure stub crash."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        raise TritonEnvironmentError(
            f"{sys.executable} is a static Python build; the Triton Python-backend stub links "
            "libpython. Use a Python built with --enable-shared (pyenv: "
            "PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install 3.11) and recreate the venv."
        )
    numpy_version = importlib.metadata.version("numpy")
    if int(numpy_version.split(".", 1)[0]) >= 2:
        raise TritonEnvironmentError(
            f"numpy {numpy_version} is installed; the Triton 2.51 Python backend needs numpy<2. "
            "Reinstall the pinned environment (make install)."
        )
    stub = _pytriton_root() / "tritonserver" / "python_backend_stubs" / _python_version() / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonEnvironmentError(f"nvidia-pytriton ships no Python-backend stub for Python {_python_version()}")


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that are free right now (for tests and side-by-side servers)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _pytriton_root() -> Path:
    # find_spec, not import: importing pytriton pulls in its whole client stack.
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonEnvironmentError("nvidia-pytriton is not installed in this venv (make install)")
    return Path(next(iter(spec.submodule_search_locations)))


@functools.cache
def has_cuda_driver() -> bool:
    """True when an NVIDIA device node exists and the CUDA driver library can be found (Triton can use a GPU)."""
    if not any(Path("/dev").glob("nvidia[0-9]*")):
        return False
    return ctypes.util.find_library("cuda") is not None


def _copy_log(source: IO[bytes], log: IO[bytes], drop: re.Pattern[bytes]) -> None:
    """Copy the server's output into its log, line by line, without the lines ``drop`` matches."""
    with source, log:
        for line in source:
            if drop.match(line):
                continue
            try:
                log.write(line)
                log.flush()
            except (OSError, ValueError):
                # Keep draining: a full disk must not block the server's writes, nor end it by SIGPIPE.
                continue


class TritonServer:
    """One ``tritonserver`` process over one model repository; use as a context manager."""

    def __init__(
        self,
        model_repository: Path,
        settings: TritonSettings | None = None,
        *,
        run_dir: Path | None = None,
        log_path: Path | None = None,
        load_models: Sequence[str] = (),
        extra_args: Sequence[str] = (),
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.settings = settings if settings is not None else TritonSettings()
        self._run_dir = run_dir
        self._owns_run_dir = run_dir is None
        self._log_path = log_path
        self.load_models = list(load_models)
        self.extra_args = list(extra_args)
        self._process: subprocess.Popen[bytes] | None = None
        self._watchdog: GroupWatchdog | None = None
        self._log_copier: threading.Thread | None = None
        # Each server gets its own shared-memory names so side-by-side servers cannot collide.
        self._shm_prefix = f"triton_{os.getpid()}_{uuid.uuid4().hex[:8]}_"

    @property
    def http_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.http_port}"

    @property
    def grpc_url(self) -> str:
        """``host:port``, the form gRPC clients (and tritonclient.grpc) take."""
        return f"{self.settings.host}:{self.settings.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.metrics_port}/metrics"

    @property
    def log_path(self) -> Path:
        if self._log_path is not None:
            return self._log_path
        if self._run_dir is None:
            raise TritonError("the server has no run folder yet; call start() first")
        return self._run_dir / "tritonserver.log"

    @property
    def pid(self) -> int | None:
        """The server's pid (also its process group id) while started; None before start and after stop."""
        return self._process.pid if self._process is not None else None

    @property
    def shm_prefix(self) -> str:
        """Unique to this server: the server and each of its backend stubs carry it on their command line."""
        return self._shm_prefix

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> TritonServer:
        """Launch the server and block until it reports ready; raise ``TritonStartError`` otherwise."""
        if self.is_running():
            raise TritonError(f"this server is already running (pid {self.pid})")
        check_environment()
        if not self.model_repository.is_dir():
            raise TritonStartError(f"model repository {self.model_repository} is not a folder")
        self._check_ports_free()
        if self._run_dir is None:
            self._run_dir = Path(tempfile.mkdtemp(prefix="tritonserver-"))
        self._run_dir.mkdir(parents=True, exist_ok=True)
        backends = self._prepare_backends(self._run_dir)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        gpu = has_cuda_driver()
        command = [str(_pytriton_root() / "tritonserver" / "bin" / "tritonserver"), *self._args(backends, gpu=gpu)]
        logger.info("starting Triton on %s (log: %s)", self.http_url, self.log_path)
        logger.debug("command: %s", " ".join(command))
        self._launch(command, filter_log=not gpu)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, command: list[str], *, filter_log: bool) -> None:
        log = self.log_path.open("wb")
        try:
            process = subprocess.Popen(
                command,
                env=self._env(),
                stdout=subprocess.PIPE if filter_log else log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Own process group: stop() and the watchdog signal the server and its stubs together,
                # and Ctrl-C in a terminal reaches only the parent, which stops the server gracefully.
                process_group=0,
            )
        except BaseException:
            log.close()
            raise
        self._process = process
        if filter_log and process.stdout is not None:
            self._log_copier = threading.Thread(
                target=_copy_log, args=(process.stdout, log, _CPU_ONLY_NOISE), name="triton-log", daemon=True
            )
            self._log_copier.start()
        else:
            log.close()
        try:
            self._watchdog = GroupWatchdog(process.pid, self.settings.stop_timeout_s)
        except (OSError, subprocess.SubprocessError) as exc:
            self.stop()
            raise TritonStartError(f"cannot start the watchdog that stops Triton with this process: {exc}") from exc

    def stop(self) -> None:
        """SIGTERM, wait ``stop_timeout_s``, then SIGKILL the server's process group."""
        process = self._process
        if process is None:
            return
        if self._watchdog is not None:
            # From here on stop() is in charge: the watchdog would kill the stubs as soon as the server exits.
            self._watchdog.release()
            self._watchdog = None
        if process.poll() is None:
            logger.info("stopping Triton (pid %d)", process.pid)
            self._signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=self.settings.stop_timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("Triton did not exit %.0f s after SIGTERM; killing it", self.settings.stop_timeout_s)
                self._signal_group(process, signal.SIGKILL)
                process.wait(timeout=10)
        # Stubs notice a dead parent only on their next health check; do not leave them orphaned.
        self._signal_group(process, signal.SIGKILL)
        # Killed stubs take a moment to go (and to give back their memory): return once they have.
        deadline = time.monotonic() + 10
        while group_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._log_copier is not None:
            # The pipe ends once every process of the group is gone; the log is complete after this.
            self._log_copier.join(timeout=10)
            self._log_copier = None
        self._process = None
        # A killed server (e.g. stuck on a hung load) leaves its Python-backend regions behind.
        for region in Path("/dev/shm").glob(f"{self._shm_prefix}*"):
            with contextlib.suppress(OSError):
                region.unlink()
        if self._owns_run_dir and self._run_dir is not None:
            # A temporary run folder goes, except the log when it lives there (it explains failures).
            keep_log = self._log_path is None
            shutil.rmtree(self._run_dir / "backends" if keep_log else self._run_dir, ignore_errors=True)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The server's error lines, then its last ``lines`` lines without the banner tables."""
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, TritonError):
            return ""
        # Triton prefixes errors with E<mmdd>; its option and model tables would crowd them out.
        errors = [line for line in text.splitlines() if re.match(r"E\d{4} ", line)]
        rest = [line for line in text.splitlines() if line.strip() and not line.startswith(("|", "+"))]
        tail = rest[-lines:]
        return "\n".join([*(line for line in errors if line not in tail), *tail])

    def _args(self, backends: Path, *, gpu: bool) -> list[str]:
        s = self.settings
        args = [
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backends}",
            f"--model-control-mode={s.model_control_mode}",
            f"--http-address={s.host}",
            f"--http-port={s.http_port}",
            f"--grpc-address={s.host}",
            f"--grpc-port={s.grpc_port}",
            f"--metrics-address={s.host}",
            f"--metrics-port={s.metrics_port}",
            f"--exit-timeout-secs={s.exit_timeout_secs}",
            f"--log-verbose={s.log_verbose}",
            # Each server gets its own shared-memory names so side-by-side servers cannot collide.
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
        ]
        if not gpu:
            # Without a CUDA driver, pinned (page-locked) host memory cannot be had: the default 256 MB
            # pool only earns a warning at start. GPU metrics have no GPU to read.
            args += ["--pinned-memory-pool-byte-size=0", "--allow-gpu-metrics=false"]
        if s.strict_model_config:
            args.append("--disable-auto-complete-config")
        if s.model_control_mode == "poll":
            args.append(f"--repository-poll-secs={s.repository_poll_secs}")
        if s.model_control_mode == "explicit":
            args += [f"--load-model={name}" for name in self.load_models]
        elif self.load_models:
            raise TritonError(f"load_models needs model_control_mode=explicit, not {s.model_control_mode!r}")
        return [*args, *self.extra_args]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        libs = [str(_pytriton_root().parent / "nvidia_pytriton.libs"), str(sysconfig.get_config_var("LIBDIR"))]
        if env.get("LD_LIBRARY_PATH"):
            libs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = ":".join(libs)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        # model.py is imported from its version folder: bytecode written there would change the version.
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        return env

    @staticmethod
    def _prepare_backends(run_dir: Path) -> Path:
        source = _pytriton_root() / "tritonserver"
        backend = run_dir / "backends" / "python"
        if backend.exists():
            shutil.rmtree(backend)
        shutil.copytree(source / "backends" / "python", backend, ignore=shutil.ignore_patterns("__pycache__"))
        stub = source / "python_backend_stubs" / _python_version() / "triton_python_backend_stub"
        shutil.copy2(stub, backend / "triton_python_backend_stub")
        return backend.parent

    def _check_ports_free(self) -> None:
        # Otherwise the readiness probe could be answered by whatever already holds the port.
        s = self.settings
        for name, port in (("http", s.http_port), ("grpc", s.grpc_port), ("metrics", s.metrics_port)):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((s.host if s.host != "localhost" else "127.0.0.1", port))
                except OSError as exc:
                    raise TritonStartError(
                        f"{name} port {port} on {s.host} is already in use ({exc.strerror}); "
                        f"stop what holds it or set TRITON_{name.upper()}_PORT"
                    ) from exc

    def _wait_ready(self) -> None:
        s = self.settings
        started = time.monotonic()
        deadline = started + s.ready_timeout_s
        next_report = started + 5.0
        attempt = 0
        while True:
            attempt += 1
            if self._process is None or self._process.poll() is not None:
                code = None if self._process is None else self._process.returncode
                raise TritonStartError(
                    f"tritonserver exited with code {code} before it was ready; "
                    f"end of {self.log_path}:\n{self.log_tail()}"
                )
            if self._probe_ready():
                logger.info("Triton ready after %.1f s (%d probes)", time.monotonic() - started, attempt)
                return
            now = time.monotonic()
            if now >= deadline:
                raise TritonStartError(
                    f"Triton not ready after {s.ready_timeout_s:.0f} s (TRITON_READY_TIMEOUT_S); "
                    f"end of {self.log_path}:\n{self.log_tail()}"
                )
            if now >= next_report:
                logger.info("waiting for Triton: %.0f of %.0f s", now - started, s.ready_timeout_s)
                next_report = now + 5.0
            time.sleep(s.ready_poll_s)

    def _probe_ready(self) -> bool:
        # urllib, not httpx: the probe runs every half second and must not log each request. No proxy:
        # an HTTP_PROXY from the environment must not answer for a loopback server.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"{self.http_url}/v2/health/ready", timeout=2.0) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    @staticmethod
    def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
