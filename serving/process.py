"""Start a server as its own process group that cannot outlive this process, however it ends.

``start_new_session`` lets ``stop()`` signal the server and its children together. A watchdog
process holds the read end of a pipe whose write end only this process holds: when this process
exits for any reason (return, exception, SIGKILL), the pipe closes and the watchdog stops the whole
group. Unlike ``PR_SET_PDEATHSIG``, this follows the process, not the thread that forked, so a server
started from a worker thread survives that thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

_WATCHDOG = """
import os, signal, sys, time
fd, group, grace = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
signal.signal(signal.SIGINT, signal.SIG_IGN)
while True:
    try:
        if not os.read(fd, 1):
            break
    except InterruptedError:
        continue
    except OSError:
        break
def send(sig):
    try:
        os.killpg(group, sig)
        return True
    except OSError:
        return False
if send(signal.SIGTERM):
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and send(0):
        time.sleep(0.1)
    send(signal.SIGKILL)
"""


class ManagedProcess:
    """One server process group plus its watchdog; ``stop()`` is idempotent."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_file: Path | None = None,
        cwd: Path | None = None,
        grace_s: float = 10.0,
    ) -> None:
        self.command = list(command)
        self.grace_s = grace_s
        output: IO[bytes] | int = subprocess.DEVNULL
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
                start_new_session=True,
            )
        finally:
            if handle is not None:
                handle.close()
        read_end, self._lifeline = os.pipe()
        try:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-S", "-c", _WATCHDOG, str(read_end), str(self.process.pid), str(grace_s)],
                pass_fds=(read_end,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            os.close(read_end)

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    def is_running(self) -> bool:
        return self.process.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the server's whole group (e.g. SIGHUP for a reload)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM the group, wait, SIGKILL what is left; return the server's exit code."""
        timeout = self.grace_s if timeout_s is None else timeout_s
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored SIGTERM for %.0f s; killing it", self.command[0], timeout)
        # Children (worker processes, backend stubs) may outlive the leader: clear the group.
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        self._release_watchdog()
        return self.process.returncode

    def _release_watchdog(self) -> None:
        if self._lifeline >= 0:
            os.close(self._lifeline)
            self._lifeline = -1
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._watchdog.wait(timeout=5)

    def __del__(self) -> None:
        # Best effort for a forgotten handle; the watchdog covers the rest when the process exits.
        with contextlib.suppress(Exception):
            if self._lifeline >= 0 and self.process.poll() is not None:
                self._release_watchdog()
