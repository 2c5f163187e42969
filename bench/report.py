"""Turn bench results into the summary line, bench/REPORT.md, PNG plots and the README's Figures section."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: (summary key, target, "max" or "min", what it is)
TARGETS: tuple[tuple[str, float, str, str], ...] = (
    ("gateway_added_p50_ms", 1.0, "max", "p50 the gateway adds over direct Triton (concurrency 1)"),
    ("gateway_added_p99_ms", 2.0, "max", "p99 the gateway adds over direct Triton (concurrency 1)"),
    ("gateway_throughput_ratio_c8", 0.8, "min", "gateway throughput / direct Triton throughput (concurrency 8)"),
    ("batching_gain", 4.0, "min", "Triton throughput at concurrency 8 / at 1 (dynamic batching)"),
    ("triton_vs_inprocess_c8", 4.0, "min", "Triton path / transformers.generate in FastAPI (concurrency 8)"),
    ("rollback_s_max", 10.0, "max", "fault onset to canary weight 0, worst of the runs (s)"),
    ("rollback_client_errors", 0.0, "max", "client-visible errors during the rollback runs"),
    ("noop_repro_s", 1.5, "max", "no-op `dvc repro` (s)"),
)

#: Why a target can be missed on these machines; shown next to a missed target.
CAUSES = {
    "gateway_added_p50_ms": "the gateway and Triton share 2 cores: the hop's CPU time competes with the model's",
    "gateway_added_p99_ms": "tail latency on a shared 2-core machine is dominated by scheduling noise",
    "gateway_throughput_ratio_c8": (
        "at concurrency 8 Triton alone saturates both cores; every gateway request's CPU is taken from the model"
    ),
    "batching_gain": (
        "measured from wrk straight to Triton, whose requests queue far longer than the same load through the "
        "gateway's persistent connections (below, with the gain seen there); a batch of 8 on 2 cores is also "
        "compute-bound: batching saves per-call overhead, not the arithmetic, and a GPU gains far more"
    ),
    "triton_vs_inprocess_c8": (
        "one generate call in-process skips the HTTP, IPC and batching hops, so it is much faster than Triton's "
        "single request on this tiny model; Triton's batching gain on 2 cores does not cover that gap"
    ),
    "rollback_s_max": "the canary got too little traffic at its first step to reach the floor's minimum sample",
    "rollback_client_errors": "a canary failure was not retried on the champion",
    "noop_repro_s": "DVC's own start-up (importing its dependencies) dominates on a slow machine",
}


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """The one JSON line ``make bench`` prints last."""
    overhead = results["overhead"]
    direct, gateway, nginx = overhead["direct"], overhead["gateway"], overhead["nginx"]
    return {
        "gateway_added_p50_ms": round(gateway["p50_ms"] - direct["p50_ms"], 2),
        "gateway_added_p99_ms": round(gateway["p99_ms"] - direct["p99_ms"], 2),
        "gateway_throughput_ratio_c8": round(gateway["rps_c8"] / direct["rps_c8"], 3),
        "edge_added_p50_ms": round(nginx["p50_ms"] - direct["p50_ms"], 2),
        "edge_throughput_ratio_c8": round(nginx["rps_c8"] / direct["rps_c8"], 3),
        "batching_gain": round(direct["rps_c8"] / direct["rps_c1"], 2),
        "triton_vs_inprocess_c8": results["inprocess"]["ratio"],
        "rollback_s_max": results["rollout"]["max_s"],
        "rollback_client_errors": results["rollout"]["client_errors"],
        "noop_repro_s": results["pipeline"]["noop_repro_s"],
        "full_repro_s": results["pipeline"]["full_repro_s"],
        "bench_s": results["bench_s"],
    }


def verdicts(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key, target, kind, what in TARGETS:
        value = float(summary[key])
        met = value <= target if kind == "max" else value >= target
        rows.append({"key": key, "what": what, "value": value, "target": target, "kind": kind, "met": met})
    return rows


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def markdown(results: dict[str, Any]) -> str:
    summary, machine = results["summary"], results["machine"]
    overhead, quant = results["overhead"], results["pipeline"]["quantization"]
    lines = [
        f"Measured by `make bench` on {machine['date']}: {machine['cpu']}, {machine['cores']} cores, "
        f"{'GPU ' + machine['gpu'] if machine['gpu'] else 'no GPU'}, Python {machine['python']}, torch "
        f"{machine['torch']}; the tiny model. Each comparison alternates its sides over "
        f"{overhead['rounds']} rounds of {overhead['seconds_per_run']:.0f} s (wrk, keep-alive); medians.",
        "",
        "| figure | measured | target | |",
        "|---|---|---|---|",
    ]
    for row in verdicts(summary):
        sign = "≤" if row["kind"] == "max" else "≥"
        mark = "met" if row["met"] else f"missed: {CAUSES[row['key']]}"
        if row["key"].startswith("gateway_added") and row["value"] < 0:
            mark = "inconclusive: the direct side's tail caught a backend pause (below)"
        lines.append(f"| {row['what']} | {_fmt(row['value'])} | {sign} {_fmt(row['target'])} | {mark} |")
    lines += [
        "",
        "| path | p50 ms (c1) | p99 ms (c1) | req/s (c1) | req/s (c8) |",
        "|---|---|---|---|---|",
    ]
    for name, label in (
        ("direct", "Triton directly (KServe v2)"),
        ("gateway", "gateway"),
        ("nginx", "nginx + gateway"),
    ):
        row = overhead[name]
        lines.append(
            f"| {label} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['rps_c1']:.0f} | {row['rps_c8']:.0f} |"
        )
    direct, gateway = overhead["direct"], overhead["gateway"]
    lines += [
        "",
        f"Batching gain seen through the gateway (its persistent upstream connections): "
        f"{gateway['rps_c8'] / gateway['rps_c1']:.2f}x; directly from wrk: "
        f"{direct['rps_c8'] / direct['rps_c1']:.2f}x.",
    ]
    if direct["rps_c8"] < gateway["rps_c8"]:
        lines += [
            "",
            "Direct Triton is slower than the gateway at concurrency 8 in this run. What is known: the Python "
            "backend pauses every in-flight request together for about 530 ms a few times a minute (whatever "
            "the client: wrk, aiohttp, http.client, the gateway; not Python's GC, `gc.freeze()` keeps it; not "
            "a batch size's first use, warming sizes 1-8 at load keeps it), which sets every p99 here; and "
            "wrk's 8 fresh connections straight to Triton's HTTP server queue far longer (Triton's metrics: "
            "60-155 ms queue per request with the instance 20-40% busy) than the same load from a threaded "
            "Python client (170-215 req/s). The cause of the second is not found yet; the gateway ratios "
            "above are against this direct figure.",
        ]
    inproc = results["inprocess"]["rps_c8"]
    lines += [
        "",
        f"transformers.generate in a FastAPI handler, one request at a time: {inproc['inprocess']:.0f} req/s at "
        f"concurrency 8, against {inproc['triton']:.0f} req/s for nginx + gateway + Triton "
        f"({results['inprocess']['ratio']:.1f}x).",
        "",
        "| quantization | weight bytes | golden accuracy (in-process) | served accuracy | served p50 ms (c1) |",
        "|---|---|---|---|---|",
    ]
    p50 = results["quantization_p50_ms"]
    for method in ("none", "bnb-int8", "bnb-nf4"):
        row = quant[method]
        lines.append(
            f"| {method} | {row['weights_bytes']:,} | {row['golden_accuracy']:.1%} | {row['served_accuracy']:.1%} "
            f"| {p50[method]:.1f} |"
        )
    roll = results["rollout"]
    lines += [
        "",
        f"Rollback, {len(roll['runs'])} runs under synthetic traffic through nginx: fault onset to canary weight 0 "
        f"in {', '.join(f'{s:.1f}' for s in roll['runs'])} s; {roll['client_errors']} client-visible errors "
        f"in {roll['requests']:,} requests.",
        f"Pipeline: a fresh copy's full `dvc repro` {results['pipeline']['full_repro_s']:.0f} s; no-op "
        f"{results['pipeline']['noop_repro_s']:.2f} s. Whole benchmark: {results['bench_s']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def plots(results: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overhead = results["overhead"]
    names = ["direct", "gateway", "nginx"]
    labels = ["Triton", "gateway", "nginx+gateway"]
    files = []
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    x = range(len(names))
    left.bar([i - 0.2 for i in x], [overhead[n]["p50_ms"] for n in names], 0.4, label="p50")
    left.bar([i + 0.2 for i in x], [overhead[n]["p99_ms"] for n in names], 0.4, label="p99")
    left.set_xticks(list(x), labels)
    left.set_ylabel("ms at concurrency 1")
    left.legend()
    throughput = [*(overhead[n]["rps_c8"] for n in names), results["inprocess"]["rps_c8"]["inprocess"]]
    right.bar([*labels, "in-process"], throughput)
    right.set_ylabel("req/s at concurrency 8")
    fig.tight_layout()
    files.append(out / "latency_throughput.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)

    quant = results["pipeline"]["quantization"]
    methods = ["none", "bnb-int8", "bnb-nf4"]
    fig, axes = plt.subplots(1, 3, figsize=(9, 3))
    axes[0].bar(methods, [quant[m]["weights_bytes"] / 1e6 for m in methods])
    axes[0].set_title("weights (MB)")
    axes[1].bar(methods, [quant[m]["golden_accuracy"] * 100 for m in methods])
    axes[1].set_ylim(90, 100)
    axes[1].set_title("golden accuracy (%)")
    axes[2].bar(methods, [results["quantization_p50_ms"][m] for m in methods])
    axes[2].set_title("served p50 (ms)")
    fig.tight_layout()
    files.append(out / "quantization.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)

    runs = results["rollout"]["runs"]
    fig, axis = plt.subplots(figsize=(5, 3))
    axis.bar([str(i + 1) for i in range(len(runs))], runs)
    axis.axhline(10, color="red", linestyle="--", label="target 10 s")
    axis.set_xlabel("run")
    axis.set_ylabel("fault onset to weight 0 (s)")
    axis.legend()
    fig.tight_layout()
    files.append(out / "rollback.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    return files


def write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    images = plots(results, out)
    pictures = "\n".join(f"![{p.stem}]({p.name})" for p in images)
    (out / "REPORT.md").write_text("# Benchmark report\n\n" + markdown(results) + "\n" + pictures + "\n")


START, END = "<!-- figures:start (make bench writes this section) -->", "<!-- figures:end -->"


def update_readme(results: dict[str, Any], readme: Path) -> None:
    """Replace the text between the Figures markers with this run's figures."""
    text = readme.read_text()
    if START not in text or END not in text:
        return
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    body = markdown(results).replace("](", "](bench/")
    audit = (
        "Dependency audit: `make audit` (pip-audit of requirements.lock) runs in CI's `audit` job; the "
        "machines these figures come from reach only a package mirror without a vulnerability API, so no "
        "audit result is recorded here."
    )
    readme.write_text(
        f"{head}{START}\n{body}\n{audit}\n\nPlots and every number: [bench/REPORT.md](bench/REPORT.md).\n{END}{tail}"
    )
