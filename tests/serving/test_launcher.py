"""The Triton launcher: settings, environment checks, bounded start-up, a quiet log, and a clean stop of
the whole process group (stubs included) by stop(), and when the process that started it dies."""

from __future__ import annotations

import io
import json
import os
import re
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
from pydantic import ValidationError

from serving.triton import launcher as triton_launcher
from serving.triton.__main__ import main as cli_main
from serving.triton.launcher import (
    TritonEnvironmentError,
    TritonServer,
    TritonStartError,
    check_environment,
    free_ports,
)
from serving.triton.settings import TritonSettings
from tests.conftest import ROOT, as_from_a_terminal

SLOW_MODEL = """
import time


class TritonPythonModel:
    def initialize(self, args):
        time.sleep(60)
"""

ECHO_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())])
            for r in requests
        ]
"""


def _settings(**overrides: object) -> TritonSettings:
    http, grpc, metrics = free_ports(3)
    values: dict[str, object] = {"http_port": http, "grpc_port": grpc, "metrics_port": metrics}
    return TritonSettings.model_validate(values | overrides)


def test_settings_default_to_loopback_and_the_project_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TRITON_HOST", "TRITON_HTTP_PORT", "TRITON_GRPC_PORT", "TRITON_METRICS_PORT"):
        monkeypatch.delenv(name, raising=False)

    settings = TritonSettings()

    assert (settings.host, settings.http_port, settings.grpc_port, settings.metrics_port) == (
        "127.0.0.1",
        8001,
        8002,
        8003,
    )


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_HTTP_PORT", "9101")

    assert TritonSettings().http_port == 9101


def test_settings_refuse_exposing_triton_unless_asked() -> None:
    with pytest.raises(ValidationError, match="TRITON_ALLOW_NON_LOOPBACK"):
        TritonSettings(host="0.0.0.0")

    assert TritonSettings(host="0.0.0.0", allow_non_loopback=True).host == "0.0.0.0"


def test_settings_refuse_clashing_ports() -> None:
    with pytest.raises(ValidationError, match="must differ"):
        TritonSettings(http_port=9000, grpc_port=9000)


def test_environment_refuses_numpy_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triton_launcher.importlib.metadata, "version", lambda name: "2.1.0")

    with pytest.raises(TritonEnvironmentError, match="numpy<2"):
        check_environment()


def test_environment_refuses_a_static_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triton_launcher.sysconfig, "get_config_var", lambda name: 0)

    with pytest.raises(TritonEnvironmentError, match="--enable-shared"):
        check_environment()


def test_busy_port_is_reported_before_anything_starts(tmp_path: Path) -> None:
    settings = _settings()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", settings.grpc_port))
        holder.listen()
        server = TritonServer(tmp_path, settings, run_dir=tmp_path / "run")

        with pytest.raises(TritonStartError, match=f"grpc port {settings.grpc_port}.*TRITON_GRPC_PORT"):
            server.start()

    # Refused before launching anything: no process, and not even a run folder.
    assert server.pid is None
    assert not (tmp_path / "run").exists()


def test_cli_rejects_bad_settings(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TRITON_HOST", "10.0.0.1")

    assert cli_main(["--model-repository", "."]) == 2
    assert "TRITON_ALLOW_NON_LOOPBACK" in capsys.readouterr().err


def _python_model(repository: Path, name: str, source: str, config: str | None = None) -> None:
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "1" / "model.py").write_text(source)
    (repository / name / "config.pbtxt").write_text(
        config
        if config is not None
        else f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n'
        'input { name: "x" data_type: TYPE_FP32 dims: [1] }\noutput { name: "y" data_type: TYPE_FP32 dims: [1] }\n'
    )


@pytest.mark.triton
def test_server_that_exits_reports_its_log(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    _python_model(repository, "broken", "", config='name: "broken"\nbackend: "python"\nmax_batch_size: -3\n')
    server = TritonServer(repository, _settings(), run_dir=tmp_path / "run", load_models=["broken"])

    with pytest.raises(TritonStartError, match=r"(?s)exited with code 1.*max_batch_size. must be non-negative"):
        server.start()

    assert _processes_of(server) == []
    # The log outlives the failed start: it is what explains it.
    assert "max_batch_size" in (tmp_path / "run" / "tritonserver.log").read_text()


@pytest.mark.triton
def test_start_gives_up_after_the_ready_timeout_and_leaves_nothing_running(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    _python_model(repository, "slow", SLOW_MODEL)
    settings = _settings(ready_timeout_s=3, stop_timeout_s=5, exit_timeout_secs=0)
    server = TritonServer(repository, settings, run_dir=tmp_path / "run", load_models=["slow"])

    seen: list[int] = []
    watching = threading.Event()

    def watch() -> None:
        while not watching.is_set():
            seen.append(len(_processes_of(server)))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.monotonic()
    try:
        with pytest.raises(TritonStartError, match="not ready after 3 s"):
            server.start()
    finally:
        watching.set()
        watcher.join()

    assert time.monotonic() - started < 3 + 5 + 5  # the ready timeout, the stop timeout, a margin
    # The stub was still sleeping in initialize() when the launcher gave up: it goes with the server.
    assert max(seen) == 2
    assert _processes_of(server) == []


@pytest.mark.triton
def test_context_manager_serves_then_stops(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    _python_model(repository, "echo", ECHO_MODEL)
    settings = _settings(exit_timeout_secs=0)
    with TritonServer(repository, settings, log_path=tmp_path / "triton.log", load_models=["echo"]) as server:
        assert httpx.get(f"{server.http_url}/v2/health/live").status_code == 200
        assert "nv_" in httpx.get(server.metrics_url).text
        group = server.pid
        running = _processes_of(server)

    assert group is not None and len(running) == 2, running  # the server and the echo model's stub
    assert server.pid is None
    assert _processes_of(server) == []
    assert not _group_alive(group)
    assert "Started HTTPService" in (tmp_path / "triton.log").read_text()


@pytest.mark.triton
def test_a_started_server_logs_no_error_and_no_pinned_memory_warning(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    _python_model(repository, "echo", ECHO_MODEL)
    log = tmp_path / "triton.log"
    with TritonServer(repository, _settings(exit_timeout_secs=5), log_path=log, load_models=["echo"]) as server:
        answer = _echo(server, 2.5)
        while_running = log.read_text()

    assert answer == [2.5]
    for text in (while_running, log.read_text()):
        assert "successfully loaded 'echo'" in text
        assert [line for line in text.splitlines() if re.match(r"E\d{4} ", line)] == []
        assert [line for line in text.splitlines() if "pinned" in line.lower() and line.startswith("W")] == []


def test_a_cpu_only_machine_gets_the_cpu_flags_and_a_gpu_machine_the_defaults(tmp_path: Path) -> None:
    server = TritonServer(tmp_path, _settings())

    cpu = server._args(tmp_path / "backends", gpu=False)
    gpu = server._args(tmp_path / "backends", gpu=True)

    assert {"--pinned-memory-pool-byte-size=0", "--allow-gpu-metrics=false"} <= set(cpu)
    assert not [arg for arg in gpu if arg.startswith(("--pinned-memory", "--allow-gpu-metrics", "--cuda-memory"))]


def test_the_log_loses_only_the_cpu_only_cuda_helper_line() -> None:
    lines = [
        b'I1128 13:41:55.441629 9297 cuda_memory_manager.cc:117] "CUDA memory pool disabled"\n',
        b'E1128 13:41:55.441708 9297 server.cc:241] "CudaDriverHelper has not been initialized."\n',
        b"E1128 13:41:57.000001 9297 model_lifecycle.cc:641] \"failed to load 'm' version 1: CudaDriverHelper\"\n",
        b"Traceback (most recent call last): CudaDriverHelper has not been initialized.\n",
    ]
    log = io.BytesIO()
    log.close = lambda: None  # type: ignore[method-assign]  # keep it readable after the copy

    triton_launcher._copy_log(io.BytesIO(b"".join(lines)), log, triton_launcher._CPU_ONLY_NOISE)

    assert log.getvalue() == lines[0] + lines[2] + lines[3]


# A parent process that starts a server (with a stub) and reports it; the test then kills the parent.
_PARENT = """
import json, sys, time
from pathlib import Path
from serving.triton.launcher import TritonServer
from serving.triton.settings import TritonSettings

http, grpc, metrics = (int(port) for port in sys.argv[2:5])
settings = TritonSettings(http_port=http, grpc_port=grpc, metrics_port=metrics, exit_timeout_secs=1, stop_timeout_s=5)
server = TritonServer(Path(sys.argv[1]), settings, run_dir=Path(sys.argv[5]), load_models=["echo"]).start()
print(json.dumps({"pid": server.pid, "prefix": server.shm_prefix}), flush=True)
time.sleep(600)
"""


@pytest.mark.triton
@pytest.mark.parametrize("kill", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_server_dies_with_the_process_that_started_it(tmp_path: Path, kill: signal.Signals) -> None:
    repository = tmp_path / "repo"
    _python_model(repository, "echo", ECHO_MODEL)
    ports = free_ports(3)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(repository), *map(str, ports), str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        started = json.loads(parent.stdout.readline())  # type: ignore[union-attr]
        server = _Running(started["prefix"])
        assert len(_processes_of(server)) == 2  # the server and the echo model's stub
    finally:
        parent.send_signal(kill)
        parent.wait(timeout=30)

    # The watchdog stops the group: SIGTERM, then SIGKILL after stop_timeout_s (5 s).
    _wait_until(lambda: _processes_of(server) == [] and not _group_alive(started["pid"]), 30)
    for port in ports:
        assert _port_free(port), port


@pytest.mark.triton
def test_a_server_started_from_a_worker_thread_outlives_the_thread(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    _python_model(repository, "echo", ECHO_MODEL)
    # No exit grace: a server told to stop when the thread ended would be gone within the wait below.
    server = TritonServer(repository, _settings(exit_timeout_secs=0), run_dir=tmp_path / "run", load_models=["echo"])
    failures: list[BaseException] = []

    def start() -> None:
        try:
            server.start()
        except BaseException as exc:
            failures.append(exc)

    worker = threading.Thread(target=start)
    worker.start()
    worker.join()
    assert failures == []
    try:
        time.sleep(2.0)

        assert server.is_running()
        assert len(_processes_of(server)) == 2
        assert _echo(server, 7.0) == [7.0]
    finally:
        server.stop()
    assert _processes_of(server) == []


@pytest.mark.triton
def test_ctrl_c_stops_make_triton_and_everything_it_started(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    _python_model(repository, "echo", ECHO_MODEL)
    http, grpc, metrics = free_ports(3)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TRITON_HTTP_PORT": str(http),
        "TRITON_GRPC_PORT": str(grpc),
        "TRITON_METRICS_PORT": str(metrics),
    }
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving.triton",
            "--model-repository",
            str(repository),
            "--run-dir",
            str(tmp_path / "run"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=as_from_a_terminal,
    )
    shown: list[str] = []
    try:
        assert cli.stdout is not None
        # The CLI says it is ready, then streams Triton's log from its start.
        while "successfully loaded 'echo'" not in (line := cli.stdout.readline()):
            assert line, f"the CLI ended before Triton was ready: {shown}"
            shown.append(line)
        (group,) = _child_groups(cli.pid)
        assert len(triton_launcher.group_members(group)) == 3  # server, echo stub, watchdog
    finally:
        # What a terminal's Ctrl-C does: the server has a group of its own, so only the CLI gets SIGINT.
        cli.send_signal(signal.SIGINT)
        try:
            output, _ = cli.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            cli.terminate()  # leave nothing running behind a failed test (its watchdog stops the server)
            cli.communicate(timeout=30)
            raise

    assert cli.returncode == 0
    assert not _group_alive(group)
    assert any(line.startswith("Triton ready: http") for line in shown)
    # What reached the terminal holds no error line (the CPU-only CUDA helper line included).
    assert not re.search(r"^E\d{4} ", "".join(shown) + output, re.M)


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


class _Running:
    """What ``_processes_of`` needs of a server started elsewhere."""

    def __init__(self, shm_prefix: str) -> None:
        self.shm_prefix = shm_prefix


def _processes_of(server: TritonServer | _Running) -> list[str]:
    """Command lines of live processes that belong to ``server``: the server and its backend stubs."""
    marker = server.shm_prefix.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in command:
            found.append(command.replace(b"\0", b" ").decode(errors="replace")[:200])
    return found


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


def _group_alive(pgid: int) -> bool:
    """Any live (not zombie) process left in the group: the server, a stub or the watchdog."""
    return bool(triton_launcher.group_members(pgid))


def _wait_until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"still not true after {timeout_s} s"
        time.sleep(0.2)


def _echo(server: TritonServer, value: float) -> list[float]:
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [value]}]}
    response = httpx.post(f"{server.http_url}/v2/models/echo/infer", json=body, timeout=30)
    response.raise_for_status()
    data: list[float] = response.json()["outputs"][0]["data"]
    return data
