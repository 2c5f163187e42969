"""The measurements of ``make bench``, one function per claim; each alternates its sides in rounds.

These machines are shared and noisy, so every comparison runs its two (or three) sides one after the
other, several rounds, and reports medians and ratios from the same run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench import wrk
from core.processes import ManagedProcess
from demo.scratch import Scratch, run, wait_for
from demo.traffic import Traffic, _question
from registry import rollout
from registry.state import read_state
from serving.triton.launcher import free_ports
from serving.triton.repository import RepositoryControl

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]


def chat_body() -> bytes:
    body, _ = _question(0)
    return json.dumps(body).encode()


def triton_request() -> tuple[bytes, dict[str, str]]:
    """The same conversation as a request to Triton's ``generate_stream`` endpoint (the served model is
    decoupled, so KServe ``/infer`` refuses it), built as the gateway builds it: every input of the
    contract, the ``max_tokens`` the chat body asks for, so both sides generate the same number of
    tokens. Returns the body and its headers."""
    from serving.gateway.upstream import Sampling, generate_request

    body, _ = _question(0)
    sampling = Sampling(max_tokens=body["max_tokens"], temperature=0.0, top_p=1.0, seed=0)
    return generate_request(json.dumps(body["messages"]).encode(), sampling), {"Content-Type": "application/json"}


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def overhead(stack: Scratch, rounds: int, seconds: float) -> dict[str, Any]:
    """Direct Triton vs gateway vs nginx + gateway: p50/p99 at concurrency 1, req/s at 8."""
    model = f"{stack.store.model}-v1"
    direct_body, direct_headers = triton_request()
    targets = {
        "direct": (f"{stack.triton_url}/v2/models/{model}/generate_stream", direct_body, direct_headers),
        "gateway": (f"{stack.gateway_urls[0]}/v1/chat/completions", chat_body(), {}),
        "nginx": (f"{stack.edge_url}/v1/chat/completions", chat_body(), {}),
    }
    for url, body, headers in targets.values():  # warm every path first
        wrk.load(url, body, connections=2, seconds=2, headers=headers)
    samples: dict[str, dict[str, list[float]]] = {
        name: {"p50_ms": [], "p99_ms": [], "rps_c1": [], "rps_c8": [], "failed": []} for name in targets
    }
    for index in range(rounds):
        order = list(targets) if index % 2 == 0 else list(reversed(targets))
        for name in order:
            url, body, headers = targets[name]
            c1 = wrk.load(url, body, connections=1, seconds=seconds, headers=headers)
            c8 = wrk.load(url, body, connections=8, seconds=seconds, headers=headers)
            sample = samples[name]
            sample["p50_ms"].append(c1.p50_ms)
            sample["p99_ms"].append(c1.p99_ms)
            sample["rps_c1"].append(c1.rps)
            sample["rps_c8"].append(c8.rps)
            sample["failed"].append(c1.failed + c8.failed)
            log.info("round %d %-8s c1 p50 %.2f p99 %.2f ms %.0f req/s | c8 %.0f req/s",
                     index + 1, name, c1.p50_ms, c1.p99_ms, c1.rps, c8.rps)  # fmt: skip
    result: dict[str, Any] = {name: {k: _median(v) for k, v in sample.items()} for name, sample in samples.items()}
    result["rounds"] = rounds
    result["seconds_per_run"] = seconds
    return result


def inprocess(stack: Scratch, rounds: int, seconds: float) -> dict[str, Any]:
    """The Triton path (nginx + gateway + Triton) vs transformers.generate in a FastAPI handler, at c8."""
    (port,) = free_ports(1)
    server = ManagedProcess(
        [sys.executable, "-m", "bench.inprocess", "--port", str(port)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        log_file=stack.run_dir / "logs" / "inprocess.log",
    )
    baseline = f"http://127.0.0.1:{port}"
    try:
        wait_for("the in-process server", lambda: _ok(f"{baseline}/healthz"), 120)
        targets = {"triton": f"{stack.edge_url}/v1/chat/completions", "inprocess": f"{baseline}/v1/chat/completions"}
        body = chat_body()
        for url in targets.values():
            wrk.load(url, body, connections=2, seconds=2)
        rps: dict[str, list[float]] = {name: [] for name in targets}
        for index in range(rounds):
            for name in targets if index % 2 == 0 else reversed(list(targets)):
                rps[name].append(wrk.load(targets[name], body, connections=8, seconds=seconds).rps)
                log.info("round %d %-9s c8 %.0f req/s", index + 1, name, rps[name][-1])
    finally:
        server.stop()
    medians = {name: _median(values) for name, values in rps.items()}
    return {"rps_c8": medians, "ratio": round(medians["triton"] / medians["inprocess"], 2)}


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
    p50: dict[str, list[float]] = {method: [] for method in names}
    body, headers = triton_request()
    for index in range(rounds):
        for method in names if index % 2 == 0 else reversed(list(names)):
            url = f"{stack.triton_url}/v2/models/{names[method]}/generate_stream"
            p50[method].append(wrk.load(url, body, connections=1, seconds=seconds, headers=headers).p50_ms)
    return {method: _median(values) for method, values in p50.items()}


def rollouts(stack: Scratch, canary_build: Path, runs: int) -> dict[str, Any]:
    """Fault onset to canary weight 0, ``runs`` times, under synthetic traffic through nginx."""
    run(
        [
            sys.executable, "-m", "pipelines.register", "--params", "params.yaml", "--lock", "dvc.lock",
            "--validate", "metrics/validate.json", "--package", "metrics/package.json",
            "--quantize", "metrics/quantize.json", "--metrics", "metrics/base_model.json",
            "--triton-repo", "triton-models", "--out", str(stack.run_dir / "register-canary.json"),
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
        "median_s": _median(seconds),
        "client_errors": tally.errors,
        "requests": tally.requests,
        "error_samples": tally.error_samples,
    }


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


def pipeline(copy: Path, env: dict[str, str]) -> dict[str, Any]:
    """A full `dvc repro` of a fresh copy, the no-op repro after it, and the other quantizations."""
    env = {**env, "PYTHONPATH": str(copy)}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.monotonic()
    run(["dvc", "repro"], env, "dvc repro", cwd=copy)
    full = round(time.monotonic() - started, 1)
    noop = []
    for _ in range(3):
        started = time.monotonic()
        out = run(["dvc", "repro"], env, "no-op dvc repro", cwd=copy)
        noop.append(time.monotonic() - started)
        if "Running stage" in out:
            raise RuntimeError(f"the second dvc repro was not a no-op:\n{out}")
    table = {"bnb-nf4": _quant_row(copy)}
    for method in ("none", "bnb-int8"):
        run(["dvc", "exp", "run", "-S", f"quantize.method={method}"], env, f"dvc exp run ({method})", cwd=copy)
        table[method] = _quant_row(copy)
    return {"full_repro_s": full, "noop_repro_s": _median(noop), "quantization": table}


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
