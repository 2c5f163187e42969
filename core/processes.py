"""Servers that cannot outlive the process that started them, and a managed process group around them.

A server runs as the leader of its own process group, so one signal reaches it and every helper
it spawns (Triton's backend stubs, MLflow's uvicorn, nginx's workers). A watchdog process joins
that group and holds the read end of a pipe whose write end only the starting process holds: when
that process exits for any reason (return, exception, SIGKILL) the pipe closes and the watchdog
stops the group (SIGTERM, then SIGKILL after a grace). It follows the process, not the thread that
forked the server, so a server started from a worker thread survives the thread (unlike
``PR_SET_PDEATHSIG``). Used by the Triton, MLflow and nginx launchers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)


# The watchdog runs as `python -I -S -c` (standard library only). It joins the server's process group,
# which keeps the group's id from being reused while it lives, and leaves last, by the group's SIGKILL.
_WATCHDOG = """# process-group watchdog (core.processes)
import os, select, signal, sys, time

fd, group, grace = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, signal.SIG_IGN)  # a SIGTERM to the group is for the server
parent = os.getppid()


def alive(pid):
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] != b"Z"
    except (ProcessLookupError, FileNotFoundError):
        return False
    except OSError:
        return True


orphaned = False
while alive(group):
    if select.select([fd], [], [], 0.5)[0]:
        if os.read(fd, 64):
            sys.exit(0)  # the parent stops the group itself: stand down
        orphaned = True  # EOF: the parent process is gone (only it held the write end)
        break
    if os.getppid() != parent:  # a forked child of the parent may hold the write end too
        orphaned = True
        break
if orphaned:
    try:
        os.killpg(group, signal.SIGTERM)
    except OSError:
        pass
    deadline = time.monotonic() + grace
    while alive(group) and time.monotonic() < deadline:
        time.sleep(0.1)
try:
    os.killpg(group, signal.SIGKILL)  # a member: this ends the watchdog too; else it returns
except OSError:
    pass  # the group is already empty
"""


class GroupWatchdog:
    """Kills process group ``group`` (SIGTERM, then SIGKILL after ``grace_s``) once this process is gone.

    Also clears the group (the leader's helpers) once its leader has exited. Call ``release`` before
    stopping the group yourself. ``join=False`` is for a group in another session (a detached
    service, which a process of this session cannot join): the watchdog then stays in this
    process's group, which it outlives only by the kill it was started for.
    """

    def __init__(self, group: int, grace_s: float, *, join: bool = True) -> None:
        read_end, self._write_end = os.pipe()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(read_end), str(group), str(grace_s)],
                pass_fds=(read_end,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                process_group=group if join else None,
            )
        except BaseException:
            os.close(self._write_end)
            raise
        finally:
            os.close(read_end)

    @property
    def pid(self) -> int:
        return self._process.pid

    def release(self) -> None:
        """Tell the watchdog to stand down (the caller stops the group now) and reap it."""
        if self._write_end >= 0:
            with contextlib.suppress(OSError):  # it has already gone
                os.write(self._write_end, b"stand down")
            os.close(self._write_end)
            self._write_end = -1
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def group_members(group: int) -> list[int]:
    """Pids of the live (not zombie) processes in process group ``group``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_bytes().rpartition(b")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and fields[0] != b"Z" and int(fields[2]) == group:
            members.append(int(entry.name))
    return members


def kill_group(group: int, sig: int = signal.SIGKILL) -> None:
    """Signal every process of group ``group``; a group already gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)


class ManagedProcess:
    """One server as its own process group, guarded by a ``GroupWatchdog``; ``stop()`` is idempotent."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_file: Path | None = None,
        cwd: Path | None = None,
        grace_s: float = 10.0,
        inherit_output: bool = False,
    ) -> None:
        self.command = list(command)
        self.grace_s = grace_s
        output: IO[bytes] | int | None = None if inherit_output else subprocess.DEVNULL
        handle = None
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            handle = log_file.open("ab")
            output = handle
        try:
            self.process = subprocess.Popen(
                self.command,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                process_group=0,
            )
        finally:
            if handle is not None:
                handle.close()
        try:
            self._watchdog: GroupWatchdog | None = GroupWatchdog(self.process.pid, grace_s)
        except BaseException:
            kill_group(self.process.pid)
            self.process.wait()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    def is_running(self) -> bool:
        return self.process.poll() is None

    def wait(self) -> int:
        """Block until the leader exits (the watchdog still guards the group)."""
        return self.process.wait()

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the server's whole group (e.g. SIGHUP for a reload)."""
        kill_group(self.process.pid, sig)

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM the group, wait for every member, SIGKILL what is left; return the leader's exit code."""
        timeout = self.grace_s if timeout_s is None else timeout_s
        if self._watchdog is not None:
            self._watchdog.release()  # from here on stop() is in charge of the group
            self._watchdog = None
        if self.process.poll() is None:
            kill_group(self.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.process.poll() is None or group_members(self.process.pid):
            if time.monotonic() >= deadline:
                log.warning("%s ignored SIGTERM for %.0f s; killing it", self.command[0], timeout)
                break
            time.sleep(0.05)
        kill_group(self.process.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        # A killed member takes a moment to go (and to free its port): return once it has.
        deadline = time.monotonic() + 10
        while group_members(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.process.returncode


def exit_on_sigterm() -> None:
    """Make SIGTERM (``kill``, ``timeout``, a CI runner cancelling) raise ``SystemExit(143)`` in the main
    thread, so ``finally`` blocks and context managers stop what the process started."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
