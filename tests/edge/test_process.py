"""Servers started through core.processes never outlive their parent, however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from core.processes import ManagedProcess
from tests.conftest import ROOT

_PARENT = """
import sys, time
from pathlib import Path
from serving.edge.launcher import Edge
from serving.edge.settings import EdgeSettings
settings = EdgeSettings(port=int(sys.argv[1]), internal_port=int(sys.argv[3]), upstreams=["127.0.0.1:9"])
edge = Edge(settings, Path(sys.argv[2])).start()
print(edge.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_a_parent_killed_with_sigkill_leaves_no_server(tmp_path: Path) -> None:
    from serving.triton.launcher import free_ports

    port, internal = free_ports(2)
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(port), str(tmp_path / "run"), str(internal)],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    assert parent.stdout is not None
    server_pid = int(parent.stdout.readline())
    assert _alive(server_pid)

    parent.send_signal(signal.SIGKILL)
    parent.wait()

    assert _gone_within(server_pid, 15), f"nginx (pid {server_pid}) outlived its killed parent"


def test_a_server_started_from_a_thread_outlives_the_thread() -> None:
    started: list[ManagedProcess] = []
    worker = threading.Thread(target=lambda: started.append(ManagedProcess(["sleep", "60"])))
    worker.start()
    worker.join()
    (process,) = started
    time.sleep(1.0)  # PR_SET_PDEATHSIG would have killed it by now: the forking thread is gone

    assert process.is_running()
    process.stop()
    assert not _alive(process.pid)


def test_stop_clears_children_that_outlive_the_leader() -> None:
    process = ManagedProcess(["sh", "-c", "sleep 60 & echo $! ; wait"], log_file=None)
    time.sleep(0.5)
    children = [int(p) for p in Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()]
    assert children

    process.stop()

    assert not _alive(process.pid)
    assert all(_gone_within(child, 5) for child in children)


_DETACHED_PARENT = """
import subprocess, sys, time
from core.processes import GroupWatchdog
service = subprocess.Popen(["sleep", "600"], start_new_session=True)  # as serving.stack starts one
GroupWatchdog(service.pid, grace_s=5.0, join=False)
print(service.pid, flush=True)
time.sleep(600)
"""


def test_a_detached_service_tied_by_a_watchdog_goes_with_its_killed_parent() -> None:
    """The scratch stack of `make demo` / `make bench`: services in their own sessions, gone with the parent."""
    parent = subprocess.Popen(
        [sys.executable, "-c", _DETACHED_PARENT],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    assert parent.stdout is not None
    service_pid = int(parent.stdout.readline())
    assert _alive(service_pid) and os.getsid(service_pid) == service_pid  # its own session: not joinable

    parent.send_signal(signal.SIGKILL)
    parent.wait()

    assert _gone_within(service_pid, 15), f"the detached service (pid {service_pid}) outlived its killed parent"


_SIGTERMED = """
import time
from core.processes import exit_on_sigterm
exit_on_sigterm()
try:
    print("started", flush=True)
    time.sleep(600)
finally:
    print("cleaned up", flush=True)
"""


def test_sigterm_runs_finally_blocks() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", _SIGTERMED],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "started"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 143
    assert process.stdout.read().strip() == "cleaned up"
