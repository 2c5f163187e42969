"""``check-load``: load every model of a repository into a real Triton and report each version.

The server runs with explicit model control and auto-complete off (``--strict-model-config``
semantics), so a config passes only as written. Triton's HTTP answer to a config it cannot even
read is just "failed to poll from model repository"; the reason is in its log, so it is read
from there. A model can also crash the server while it loads (Triton 2.51 dies on signal 11 when a
decoupled Python model's ``execute`` returns its responses during warmup, instead of sending them):
that model is reported with the log's reason, and a fresh server loads the models after it.
"""

from __future__ import annotations

import http.client
import logging
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from validation.findings import Finding, Severity
from validation.pbtxt import CONFIG_NAME

logger = logging.getLogger(__name__)

DEFAULT_LOAD_TIMEOUT_S = 60.0
_LOG_WAIT_S, _LOG_POLL_S = 3.0, 0.05
_POLL_FAILED = "failed to poll from model repository"
# Triton's log line: E1128 01:19:11.788608 11880 file.cc:1460] "message"
_LOG_LINE = re.compile(r'^E\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] "?(?P<message>.*?)"?$')
_STOPPED = "Triton stopped answering"


@dataclass(frozen=True, slots=True)
class VersionStatus:
    """One model version after the load: READY, or why not (``version`` is "" when none was tried)."""

    model: str
    version: str
    ready: bool
    message: str

    def format(self) -> str:
        label = f"{self.model}:{self.version}" if self.version else self.model
        return f"{label}: {'READY' if self.ready else 'FAILED'}" + ("" if self.ready else f": {self.message}")


def to_findings(repository: Path, statuses: list[VersionStatus]) -> list[Finding]:
    """The failed versions as findings on their model's config, for the same output as check-config."""
    return [
        Finding(repository / s.model / CONFIG_NAME, 0, 0, Severity.ERROR, "triton-load", s.message)
        for s in statuses
        if not s.ready
    ]


def check_load(repository: Path, load_timeout_s: float = DEFAULT_LOAD_TIMEOUT_S) -> list[VersionStatus]:
    """Start a Triton on ``repository``, load each model in turn, return every version's status."""
    # Imported here: the launcher and tritonclient are heavy and check-config needs neither.
    from serving.triton.launcher import TritonServer, free_ports
    from serving.triton.settings import TritonSettings

    http, grpc, metrics = free_ports(3)
    settings = TritonSettings(
        http_port=http, grpc_port=grpc, metrics_port=metrics, model_control_mode="explicit",
        # A model whose load hangs keeps Triton from exiting on SIGTERM; do not wait long for it.
        strict_model_config=True, exit_timeout_secs=3, stop_timeout_s=5.0,
    )  # fmt: skip
    names = model_names(repository)
    statuses: list[VersionStatus] = []
    with tempfile.TemporaryDirectory(prefix="check-load-") as run_dir:
        while names:
            # A fresh run folder (and log) per server: a crashed server's log must not name the next models.
            run = Path(tempfile.mkdtemp(prefix="server-", dir=run_dir))
            with TritonServer(repository, settings, run_dir=run, log_path=run / "tritonserver.log") as server:
                while names:
                    name = names.pop(0)
                    statuses.extend(load_one(server.http_url, server.log_path, name, load_timeout_s))
                    if not server.is_running():
                        logger.warning("Triton died loading %s; a fresh server loads the rest", name)
                        break
    return statuses


def model_names(repository: Path) -> list[str]:
    """Every model folder of a repository, as Triton sees them (hidden folders are not models)."""
    return sorted(p.name for p in repository.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_one(http_url: str, log_path: Path, name: str, load_timeout_s: float) -> list[VersionStatus]:
    """Load one model and report each version's state; the server's own words on failure."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    address = http_url.removeprefix("http://")
    client = httpclient.InferenceServerClient(address, network_timeout=load_timeout_s)
    try:
        try:
            client.load_model(name)
        except InferenceServerException as exc:
            message = exc.message() or str(exc)
            if _POLL_FAILED in message:
                message = _log_reason(log_path, name) or message
            try:
                versions = _versions(client, name)
            except (OSError, http.client.HTTPException) as gone:
                # Triton 2.51 can die on a refused load: its refusal, and that it is gone.
                return [VersionStatus(name, "", False, f"{_STOPPED} after: {message} ({gone})")]
            failed = [v for v in versions if not v.ready]
            return failed or [VersionStatus(name, "", False, message)]
        except TimeoutError:
            detail = _log_reason(log_path, name)
            return [
                VersionStatus(
                    name, "", False,
                    f"no answer within {load_timeout_s:.0f} s; Triton is still loading it"
                    + (f" ({detail})" if detail else ""),
                )
            ]  # fmt: skip
        except (OSError, http.client.HTTPException) as exc:
            # The server went away (crashed or was killed; the HTTP client may only see a closed
            # connection): say so, with what its log says of the model, rather than pass a traceback on.
            detail = _log_reason(log_path, name)
            return [VersionStatus(name, "", False, f"{_STOPPED} loading it: {detail or exc}")]
        versions = _versions(client, name)
        client.unload_model(name)
        return versions
    finally:
        client.close()


def _versions(client: Any, name: str) -> list[VersionStatus]:
    index = client.get_model_repository_index()
    return [
        VersionStatus(name, str(entry.get("version", "")), entry.get("state") == "READY", entry.get("reason", ""))
        for entry in index
        if entry.get("name") == name and entry.get("version")
    ]


def _log_reason(log_path: Path, name: str, wait_s: float = _LOG_WAIT_S) -> str:
    """The last error line of Triton's log that names the model (by name or by its folder).

    The log reaches the file through a pipe, so the line may land a moment after Triton answered:
    read again, for at most ``wait_s``, until it is there.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            lines = log_path.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        reason = next(reversed(list(_mentions(lines, name))), "")
        if reason or time.monotonic() >= deadline:
            if not reason:
                logger.debug("no log line names %s after %.1f s", name, wait_s)
            return reason
        time.sleep(_LOG_POLL_S)


def _mentions(lines: list[str], name: str) -> Iterator[str]:
    # The model by name or folder, or one of its instances ('<name>_0', as the Python backend's stub says).
    instance = re.compile(rf"'{re.escape(name)}(?:_\d+)?'")
    for line in lines:
        if not instance.search(line) and f"/{name}/" not in line:
            continue
        match = _LOG_LINE.match(line)
        if match:
            yield match.group("message").replace('\\"', '"')
        elif "Failed to" in line:
            # Python-backend stub lines are info-level but are the only trace of some failures.
            yield line.split("] ", 1)[-1].strip()
