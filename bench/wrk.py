"""Load from a second process: Debian's ``wrk`` (C, keep-alive) posting one JSON body, parsed into figures."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

_SCRIPT = """
local f = assert(io.open(os.getenv("WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
"""
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}
_LATENCY = re.compile(r"^\s+Latency\s+([\d.]+)(us|ms|s|m)\s+([\d.]+)(us|ms|s|m)\s+([\d.]+)(us|ms|s|m)", re.M)
_PERCENTILE = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", re.M)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_TOTAL = re.compile(r"^\s+(\d+) requests in", re.M)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


@dataclass(frozen=True)
class Run:
    """One wrk run: latency percentiles (ms), throughput, and anything that failed."""

    p50_ms: float
    p99_ms: float
    max_ms: float
    rps: float
    requests: int
    failed: int


def parse(output: str) -> Run:
    percentiles = {int(p): float(v) * _UNITS[u] for p, v, u in _PERCENTILE.findall(output)}
    rps = _RPS.search(output)
    total = _TOTAL.search(output)
    if rps is None or total is None or 50 not in percentiles:
        raise ValueError(f"cannot read wrk's output:\n{output}")
    non_2xx = int(m.group(1)) if (m := _NON_2XX.search(output)) else 0
    socket = sum(int(x) for x in m.groups()) if (m := _ERRORS.search(output)) else 0
    p99 = percentiles.get(99, percentiles[50])
    worst = float(m.group(5)) * _UNITS[m.group(6)] if (m := _LATENCY.search(output)) else p99
    return Run(percentiles[50], p99, worst, float(rps.group(1)), int(total.group(1)), non_2xx + socket)


def load(
    url: str,
    body: bytes,
    *,
    connections: int,
    seconds: float,
    threads: int = 1,
    headers: dict[str, str] | None = None,
) -> Run:
    """``connections`` closed-loop clients posting ``body`` (JSON unless ``headers`` say otherwise) to ``url``."""
    sent = {"Content-Type": "application/json", **(headers or {})}
    lines = "".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n" for k, v in sent.items())
    with tempfile.TemporaryDirectory(prefix="wrk-") as tmp:
        script, payload = Path(tmp) / "post.lua", Path(tmp) / "body"
        script.write_text(_SCRIPT + lines)
        payload.write_bytes(body)
        done = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "30s",
             "-s", str(script), url],
            env={"WRK_BODY": str(payload), "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, check=True, timeout=seconds + 60,
        )  # fmt: skip
    return parse(done.stdout)
