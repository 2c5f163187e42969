"""Direct Triton: batching gain, the stall check, Triton's own queue and compute times, memory per instance.

The served build runs in a Triton of its own (nothing else of the bench runs meanwhile). Concurrency 1
and 8 alternate over rounds; around each run the model's statistics (``/v2/models/<m>/stats``) are
read, so the report can say what Triton itself spent per request and per batch size in that run.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from pathlib import Path
from typing import Any

from bench.load import alternate, http_figures, median
from bench.requests import triton_request
from core.contract import CONFIG_FILE, parse_config

log = logging.getLogger(__name__)


def model_stats(http_url: str, model: str) -> dict[str, Any]:
    """Triton's statistics of ``model`` (its only version), as the KServe v2 extension returns them."""
    with urllib.request.urlopen(f"{http_url}/v2/models/{model}/stats", timeout=10) as response:
        stats: dict[str, Any] = json.load(response)["model_stats"][0]
    return stats


def _ns(stats: dict[str, Any], key: str) -> tuple[int, int]:
    entry = stats["inference_stats"][key]
    return int(entry["count"]), int(entry["ns"])


def stats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What Triton did between two snapshots: requests, executions, mean batch, ms per request and per batch size."""
    requests = int(after["inference_count"]) - int(before["inference_count"])
    executions = int(after["execution_count"]) - int(before["execution_count"])
    per_request = {}
    for key in ("queue", "compute_input", "compute_infer", "compute_output"):
        (count_a, ns_a), (count_b, ns_b) = _ns(after, key), _ns(before, key)
        per_request[f"{key}_ms"] = round((ns_a - ns_b) / max(count_a - count_b, 1) / 1e6, 3)
    old = {int(b["batch_size"]): b["compute_infer"] for b in before.get("batch_stats", [])}
    batches = {}
    for entry in after.get("batch_stats", []):
        size, now = int(entry["batch_size"]), entry["compute_infer"]
        prior = old.get(size, {"count": 0, "ns": 0})
        count = int(now["count"]) - int(prior["count"])
        if count > 0:
            ns = int(now["ns"]) - int(prior["ns"])
            batches[str(size)] = {"executions": count, "compute_infer_ms": round(ns / count / 1e6, 3)}
    return {
        "requests": requests,
        "executions": executions,
        "mean_batch": round(requests / max(executions, 1), 2),
        **per_request,
        "by_batch_size": batches,
    }


def instance_memory(triton_pid: int, model: str) -> list[dict[str, int]]:
    """RSS and PSS (MiB) of each Python-backend stub of ``model`` under the Triton process ``triton_pid``."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue

    def under_triton(pid: int) -> bool:
        while pid > 1:
            if pid == triton_pid:
                return True
            pid = parents.get(pid, 0)
        return False

    stubs = []
    for pid in sorted(parents):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv[0].endswith(b"triton_python_backend_stub") or not under_triton(pid):
            continue
        if not any(f"/{model}/".encode() in arg for arg in argv):
            continue
        stubs.append({"pid": pid, "rss_mib": _status_kib(pid, "VmRSS") // 1024, "pss_mib": _pss_kib(pid) // 1024})
    return stubs


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def served_instances(model_dir: Path) -> tuple[int, str]:
    """The instance count and kind a model folder's config.pbtxt renders."""
    config = parse_config((model_dir / CONFIG_FILE).read_text())
    group = config.instance_group[0]
    return group.count, "gpu" if group.kind == group.KIND_GPU else "cpu"


def direct(http_url: str, model: str, rounds: int, seconds: float) -> dict[str, Any]:
    """Concurrency 1 and 8 straight to Triton (KServe v2, wrk), alternated, with Triton's statistics."""
    url = f"{http_url}/v2/models/{model}/generate_stream"
    body, headers = triton_request()
    http_figures(url, body, headers, 2, 2)  # connections open, every batch size seen once or more

    def side(connections: int) -> Any:
        def run() -> dict[str, Any]:
            before = model_stats(http_url, model)
            figures: dict[str, Any] = http_figures(url, body, headers, connections, seconds)
            figures["triton"] = stats_delta(before, model_stats(http_url, model))
            return figures

        return run

    medians, runs = alternate({"c1": side(1), "c8": side(8)}, rounds, "direct Triton")
    return {
        **medians,
        "triton_c1": _merge([r["triton"] for r in runs["c1"]]),
        "triton_c8": _merge([r["triton"] for r in runs["c8"]]),
        "rounds_c8": [{k: v for k, v in r.items() if k != "triton"} for r in runs["c8"]],
    }


def _merge(deltas: list[dict[str, Any]]) -> dict[str, Any]:
    """Triton's statistics over every run of one side: totals, and medians of the per-request times."""
    requests = sum(d["requests"] for d in deltas)
    executions = sum(d["executions"] for d in deltas)
    sizes: dict[str, dict[str, float]] = {}
    for delta in deltas:
        for size, entry in delta["by_batch_size"].items():
            into = sizes.setdefault(size, {"executions": 0, "total_ms": 0.0})
            into["executions"] += entry["executions"]
            into["total_ms"] += entry["executions"] * entry["compute_infer_ms"]
    by_size = {
        size: {"executions": int(e["executions"]), "compute_infer_ms": round(e["total_ms"] / e["executions"], 3)}
        for size, e in sorted(sizes.items(), key=lambda item: int(item[0]))
    }
    keys = ("queue_ms", "compute_input_ms", "compute_infer_ms", "compute_output_ms")
    return {
        "requests": requests,
        "executions": executions,
        "mean_batch": round(requests / max(executions, 1), 2),
        **{key: median([d[key] for d in deltas]) for key in keys},
        "by_batch_size": by_size,
    }
