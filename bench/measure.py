"""The measurements of ``make bench``, one function per claim; each alternates its sides in rounds.

These machines are shared and noisy, so every comparison runs its two (or three) sides one after the
other, several rounds, and reports medians and ratios from the same run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from bench.load import Target, alternate, http_figures, interleaved, median, quantile_difference
from bench.requests import chat_body, triton_request
from core.processes import ManagedProcess
from demo.scratch import Scratch, run, wait_for
from demo.traffic import Traffic
from registry import rollout
from registry.state import read_state
from serving.triton.launcher import free_ports
from serving.triton.repository import RepositoryControl

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]


def overhead(stack: Scratch, rounds: int, seconds: float, paired_seconds: float) -> dict[str, Any]:
    """Direct Triton vs gateway vs nginx + gateway: p50/p99 at concurrency 1, req/s (and p50/p99) at 8; then
    what the gateway adds at concurrency 1, from requests to direct Triton and to the gateway taken in turn
    (``paired_seconds``), with 95% intervals."""
    model = f"{stack.store.model}-v1"
    direct_body, direct_headers = triton_request()
    targets = {
        "direct": (f"{stack.triton_url}/v2/models/{model}/generate_stream", direct_body, direct_headers),
        "gateway": (f"{stack.gateway_urls[0]}/v1/chat/completions", chat_body(), {}),
        "nginx": (f"{stack.edge_url}/v1/chat/completions", chat_body(), {}),
    }
    for url, body, headers in targets.values():  # warm every path first
        http_figures(url, body, headers, 2, 2)

    def side(url: str, body: bytes, headers: dict[str, str]) -> Any:
        def once() -> dict[str, float]:
            c1 = http_figures(url, body, headers, 1, seconds)
            c8 = http_figures(url, body, headers, 8, seconds)
            return {
                "p50_ms": c1["p50_ms"], "p99_ms": c1["p99_ms"], "rps_c1": c1["rps"],
                "rps_c8": c8["rps"], "p50_ms_c8": c8["p50_ms"], "p99_ms_c8": c8["p99_ms"],
                "failed": c1["failed"] + c8["failed"],
            }  # fmt: skip

        return once

    medians, _ = alternate({name: side(*target) for name, target in targets.items()}, rounds, "overhead")
    return {**medians, "rounds": rounds, "seconds_per_run": seconds,
            "c1_paired": paired_c1(targets["direct"], targets["gateway"], paired_seconds)}  # fmt: skip


def paired_c1(direct: Target, gateway: Target, seconds: float) -> dict[str, Any]:
    """p50 and p99 of each side from requests taken in turn, and gateway minus direct with 95% intervals."""
    pid = listening_pid(int(str(urlsplit(gateway[0]).port)))
    cpu_before = cpu_seconds(pid)
    done = interleaved({"direct": direct, "gateway": gateway}, seconds)
    cpu = cpu_seconds(pid) - cpu_before
    samples = done["latencies_ms"]
    sides = {
        name: {"requests": len(values), "p50_ms": round(float(np.quantile(values, 0.5)), 2),
               "p99_ms": round(float(np.quantile(values, 0.99)), 2)}
        for name, values in samples.items()
    }  # fmt: skip
    direct_ms, gateway_ms = samples["direct"], samples["gateway"]
    added = {label: quantile_difference(direct_ms, gateway_ms, q) for label, q in (("p50", 0.5), ("p99", 0.99))}
    log.info("overhead paired c1 %s added %s", sides, added)
    # What the gateway's process spent, over the requests it answered (its polling threads included).
    cpu_ms = round(cpu * 1000 / max(1, len(gateway_ms)), 2)
    return {**sides, "added": added, "failed": done["failed"], "seconds": seconds, "gateway_cpu_ms_per_request": cpu_ms}


def listening_pid(port: int) -> int:
    """The process listening on TCP ``port`` (from /proc: the socket's inode, then the process holding it)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(f"socket:[{fields[9]}]")
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        with contextlib.suppress(OSError):
            if str(fd.readlink()) in inodes:
                return int(fd.parent.parent.name)
    raise RuntimeError(f"no process is listening on port {port}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far, every thread's."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def inprocess(stack: Scratch, model_dir: Path, rounds: int, seconds: float) -> dict[str, Any]:
    """The Triton path (nginx + gateway + Triton) vs transformers.generate in a FastAPI handler, at c8.

    Both sides serve ``model_dir``'s weights in its compute dtype (the build the stack's champion is).
    """
    from bench.inprocess import served_precision

    (port,) = free_ports(1)
    server = ManagedProcess(
        [sys.executable, "-m", "bench.inprocess", "--port", str(port), "--model-dir", str(model_dir)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        log_file=stack.run_dir / "logs" / "inprocess.log",
    )
    baseline = f"http://127.0.0.1:{port}"
    try:
        wait_for("the in-process server", lambda: _ok(f"{baseline}/healthz") or not server.is_running(), 120)
        if not server.is_running():
            log_tail = (stack.run_dir / "logs" / "inprocess.log").read_text().strip().splitlines()[-1:]
            raise RuntimeError(f"the in-process server exited ({server.poll()}): {' '.join(log_tail)}")
        targets = {"triton": f"{stack.edge_url}/v1/chat/completions", "inprocess": f"{baseline}/v1/chat/completions"}
        body = chat_body()
        for url in targets.values():
            http_figures(url, body, {}, 2, 2)
        sides = {name: _c8(url, body, seconds) for name, url in targets.items()}
        medians, _ = alternate(sides, rounds, "Triton vs in-process")
    finally:
        server.stop()
    folder, dtype = served_precision(model_dir)
    quantization = json.loads((folder / "config.json").read_text()).get("quantization_config", {})
    return {
        "rps_c8": {name: m["rps"] for name, m in medians.items()},
        "p50_ms_c8": {name: m["p50_ms"] for name, m in medians.items()},
        "failed": {name: m["failed"] for name, m in medians.items()},
        "ratio": round(medians["triton"]["rps"] / medians["inprocess"]["rps"], 2),
        "weights": str(folder.relative_to(model_dir.parent.parent)),
        "compute_dtype": dtype,
        "quantization": quantization.get("quant_method", "none")
        + (" 4-bit" if quantization.get("load_in_4bit") else " 8-bit" if quantization.get("load_in_8bit") else ""),
        "rounds": rounds,
    }


def quantization_latency(stack: Scratch, builds: dict[str, Path], rounds: int, seconds: float) -> dict[str, float]:
    """p50 at concurrency 1 of each quantization, served side by side by the same Triton."""
    from core.contract import PackageParams
    from core.params import load_group
    from serving.triton.packaging import package

    params = load_group("package", PackageParams, ROOT / "params.yaml")
    names = {}
    with RepositoryControl(stack.triton_url) as control:
        for method, checkpoint in builds.items():
            result = package(
                checkpoint, ROOT / "serving/backend/model.py", stack.run_dir / "triton-repo", f"bench-{method}", params
            )
            control.load(result.triton_model)
            names[method] = result.triton_model
    body, headers = triton_request()
    sides = {
        method: _c1(f"{stack.triton_url}/v2/models/{name}/generate_stream", body, headers, seconds)
        for method, name in names.items()
    }
    medians, _ = alternate(sides, rounds, "quantization")
    return {method: m["p50_ms"] for method, m in medians.items()}


def rollouts(stack: Scratch, canary_build: Path, runs: int) -> dict[str, Any]:
    """Fault onset to canary weight 0, ``runs`` times, under synthetic traffic through nginx."""
    run(
        [
            sys.executable, "-m", "pipelines.register", "--params", "params.yaml", "--lock", "dvc.lock",
            "--validate", "metrics/validate.json", "--package", "metrics/package.json",
            "--quantize", "metrics/quantize.json", "--metrics", "metrics/base_model.json",
            "--triton-repo", "triton-models", "--golden", "artifacts/golden",
            "--out", str(stack.run_dir / "register-canary.json"),
        ],
        {**stack.env, "PYTHONPATH": str(canary_build)},
        "registering the canary build",
        cwd=canary_build,
    )  # fmt: skip
    store = stack.store
    canary = read_state(store).version_of("candidate")
    if canary is None:
        raise RuntimeError("the canary build was not registered as candidate")
    traffic = Traffic(stack.edge_url).start()
    seconds: list[float] = []
    try:
        for attempt in range(runs):
            if attempt:
                rollout.mark_candidate(store, stack.actor, canary, again=True)
            rollout.promote_to_canary(store, stack.actor, canary, reason=f"make bench: rollback run {attempt + 1}")
            wait_for("the controller's first step", lambda: read_state(store).canary_weight > 0, 120, 0.1)
            onset = time.monotonic()
            stack.admin("POST", "/admin/faults", {"version": canary, "error_percent": 100})
            wait_for(
                "the rollback",
                lambda: (s := read_state(store)).canary_weight == 0 or s.version_of("canary") is None,
                60,
                0.05,
            )
            seconds.append(round(time.monotonic() - onset, 2))
            log.info("rollback run %d: %.2f s from fault onset to weight 0", attempt + 1, seconds[-1])
            stack.admin("DELETE", "/admin/faults")
            wait_for("the canary alias to go", lambda: read_state(store).version_of("canary") is None, 30)
    finally:
        tally = traffic.stop()
    return {
        "runs": seconds,
        "max_s": max(seconds),
        "median_s": median(seconds),
        "client_errors": tally.errors,
        "requests": tally.requests,
        "error_samples": tally.error_samples,
    }


def _c8(url: str, body: bytes, seconds: float) -> Callable[[], dict[str, float]]:
    return lambda: http_figures(url, body, {}, 8, seconds)


def _c1(url: str, body: bytes, headers: dict[str, str], seconds: float) -> Callable[[], dict[str, float]]:
    return lambda: http_figures(url, body, headers, 1, seconds)


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def copy_repository(dest: Path) -> Path:
    """The project's files (tracked and not ignored) in a fresh git repository, as a clone has them."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    shutil.rmtree(dest, ignore_errors=True)
    for rel in filter(None, listed.split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git = ["git", "-C", str(dest), "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "bench copy"]):
        subprocess.run([*git, *command], check=True, capture_output=True)
    return dest


def _copy_env(copy: Path, env: dict[str, str]) -> dict[str, str]:
    env = {**env, "PYTHONPATH": str(copy)}
    env.pop("MLFLOW_TRACKING_URI", None)  # the copy's own local store
    return env


def repro(copy: Path, env: dict[str, str], noops: int = 3) -> dict[str, Any]:
    """A full `dvc repro` of a fresh copy, then the no-op repro after it: wall time, and the CPU time it used.

    CPU time well under wall time means the no-op waited for a core (other load), not that DVC worked longer.
    """
    env = _copy_env(copy, env)
    started = time.monotonic()
    run(["dvc", "repro"], env, "dvc repro", cwd=copy)
    full = round(time.monotonic() - started, 1)
    wall, cpu = [], []
    for _ in range(noops):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        out = run(["dvc", "repro"], env, "no-op dvc repro", cwd=copy)
        wall.append(time.monotonic() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if "Running stage" in out:
            raise RuntimeError(f"the second dvc repro was not a no-op:\n{out}")
    return {"full_repro_s": full, "noop_repro_s": median(wall), "noop_repro_cpu_s": median(cpu), "noop_runs": noops}


def quantization_table(copy: Path, env: dict[str, str]) -> dict[str, Any]:
    """Each quantization through the pipeline (`dvc exp run -S quantize.method=...`); the copy ends on bnb-int8."""
    env = _copy_env(copy, env)
    table = {"bnb-nf4": _quant_row(copy)}
    for method in ("none", "bnb-int8"):
        run(["dvc", "exp", "run", "-S", f"quantize.method={method}"], env, f"dvc exp run ({method})", cwd=copy)
        table[method] = _quant_row(copy)
    return table


def _quant_row(copy: Path) -> dict[str, Any]:
    quantize = json.loads((copy / "metrics/quantize.json").read_text())
    validate = json.loads((copy / "metrics/validate.json").read_text())
    latency = json.loads((copy / "reports/validate/latency.json").read_text())
    return {
        "weights_bytes": quantize["weights_bytes"],
        "golden_accuracy": quantize["golden_accuracy"],
        "served_accuracy": validate["accuracy"],
        "validate_p50_ms": latency["p50_ms"],
    }
