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
edge = Edge(EdgeSettings(port=int(sys.argv[1]), upstreams=["127.0.0.1:9"]), Path(sys.argv[2])).start()
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

    (port,) = free_ports(1)
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(port), str(tmp_path / "run")],
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
