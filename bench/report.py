"""Turn one run's results into the summary line, bench/REPORT.md, PNG plots and the README's Figures section.

Every number printed comes from the results of that run (``results.json``); the only numbers written
here are the targets. A missed target shows what the run measured about it, never a stock excuse.
Another measurement may add a section: a renderer in ``SECTIONS`` for ``bench/<name>.json`` (written
by its own make target, saying when it ran) is copied into results.json and rendered after the figures.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _canary(section: dict[str, Any]) -> str:
    from bench.canary.report import markdown as canary_markdown

    # Its figures say when they ran; its plot lies beside this report.
    return "## Canary verdicts (`make canary-eval`)\n\n" + canary_markdown(section).replace("](bench/", "](")


#: ``bench/<name>.json`` sections a renderer knows: name -> function from that file's JSON to Markdown.
#: A section's own plot is ``bench/<name>.png``; the README shows each section under its own markers.
SECTIONS: dict[str, Callable[[dict[str, Any]], str]] = {"canary": _canary}


@dataclass(frozen=True)
class Target:
    key: str
    target: float
    kind: str  # "max" or "min"
    what: str
    part: str  # the part that measures it


TARGETS: tuple[Target, ...] = (
    Target("direct_c8_p99_over_p50", 3.0, "max", "stall check: direct Triton p99 / p50 at concurrency 8", "triton"),
    Target("batching_gain", 6.0, "min", "dynamic batching: direct Triton req/s at concurrency 8 / at 1", "triton"),
    Target(
        "gateway_added_p50_ms", 1.0, "max", "p50 the gateway adds over direct Triton, concurrency 1 (ms)", "overhead"
    ),
    Target(
        "gateway_added_p99_ms", 2.0, "max", "p99 the gateway adds over direct Triton, concurrency 1 (ms)", "overhead"
    ),
    Target("gateway_throughput_ratio_c8", 0.8, "min", "gateway req/s / direct Triton req/s, concurrency 8", "overhead"),
    Target(
        "triton_vs_inprocess_c8", 4.0, "min", "Triton path / transformers.generate in FastAPI, req/s at 8", "inprocess"
    ),
    Target("noop_repro_s", 1.5, "max", "no-op `dvc repro` (s)", "pipeline"),
    Target("ttft_p50_ratio", 1.2, "max", "TTFT p50 through nginx / direct Triton", "ttft"),
    Target("rollback_s_max", 10.0, "max", "fault onset to canary weight 0, worst run (s)", "rollback"),
    Target("rollback_client_errors", 0.0, "max", "client-visible errors during the rollback runs", "rollback"),
)
#: Above this, gateway req/s / direct req/s says the direct side is broken, not that the gateway is fast.
BROKEN_DIRECT_RATIO = 1.05


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("inf")


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """The one JSON line ``make bench`` prints last: every target's figure the run measured."""
    summary: dict[str, Any] = {}
    if triton := results.get("triton"):
        summary["direct_c8_p99_over_p50"] = _ratio(triton["c8"]["p99_ms"], triton["c8"]["p50_ms"])
        summary["batching_gain"] = round(triton["c8"]["rps"] / triton["c1"]["rps"], 2)
        summary["instances"] = triton["instances"]
        summary["instance_rss_mib"] = max(m["rss_mib"] for m in triton["memory"])
    if overhead := results.get("overhead"):
        direct, gateway, nginx = overhead["direct"], overhead["gateway"], overhead["nginx"]
        for label in ("p50", "p99"):
            summary[f"gateway_added_{label}_ms"] = overhead["c1_paired"]["added"][label]["value"]
        summary["gateway_throughput_ratio_c8"] = _ratio(gateway["rps_c8"], direct["rps_c8"])
        summary["edge_added_p50_ms"] = round(nginx["p50_ms"] - direct["p50_ms"], 2)
        summary["edge_throughput_ratio_c8"] = _ratio(nginx["rps_c8"], direct["rps_c8"])
    if hop := results.get("hop"):
        summary["hop_added_p50_ms"] = round(hop["gateway"]["p50_ms"] - hop["direct"]["p50_ms"], 2)
    if inprocess := results.get("inprocess"):
        summary["triton_vs_inprocess_c8"] = inprocess["ratio"]
    if pipeline := results.get("pipeline"):
        summary["noop_repro_s"] = round(pipeline["noop_repro_s"], 2)
        summary["noop_repro_cpu_s"] = round(pipeline["noop_repro_cpu_s"], 2)
        summary["full_repro_s"] = pipeline["full_repro_s"]
    if (ttft := results.get("ttft")) and ttft.get("measured"):
        summary["ttft_p50_ratio"] = ttft["ratio"]
    if rollback := results.get("rollback"):
        summary["rollback_s_max"] = rollback["max_s"]
        summary["rollback_client_errors"] = rollback["client_errors"]
    summary["bench_s"] = results.get("bench_s")
    summary["verdicts"] = {row["key"]: row["verdict"] for row in verdicts(results, summary)}
    summary["failed_parts"] = sorted(results.get("failed", {}))
    return summary


def verdicts(results: dict[str, Any], summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target: met, missed, inconclusive or not measured, with what the run measured about it."""
    rows = []
    for t in TARGETS:
        row: dict[str, Any] = {"key": t.key, "what": t.what, "target": t.target, "kind": t.kind}
        if t.key not in summary:
            row["verdict"] = "not measured"
            row["why"] = _not_measured(results, t.part)
        else:
            value = float(summary[t.key])
            met = value <= t.target if t.kind == "max" else value >= t.target
            row |= {"value": value, "verdict": "met" if met else "missed"}
            if t.key == "gateway_throughput_ratio_c8" and value > BROKEN_DIRECT_RATIO:
                row["verdict"] = "inconclusive"
            if t.key.startswith("gateway_added"):
                row["interval"] = interval = _added(results, t.key)
                row["verdict"] = _interval_verdict(interval, t.target)
            if failed := _failed_requests(results.get(t.part)):
                row["verdict"] = "inconclusive"  # a figure over failed requests times the failures
                row["why"] = f"{failed:,} requests failed during the {t.part} part's runs"
            elif row["verdict"] != "met":
                row["why"] = _why(t.key, results, summary)
        rows.append(row)
    return rows


def _added(results: dict[str, Any], key: str) -> dict[str, float]:
    """The paired interval behind ``gateway_added_<q>_ms``."""
    return dict(results["overhead"]["c1_paired"]["added"][key.split("_")[2]])


def _interval_verdict(interval: dict[str, float], target: float) -> str:
    """Met only when the whole 95% interval is at most the target, missed when all of it is above.

    The gateway's path contains the direct one, so an interval wholly below zero says the direct side was
    the slower one: that baseline is broken, whatever the target.
    """
    if interval["high"] < 0:
        return "inconclusive"
    if interval["high"] <= target:
        return "met"
    return "missed" if interval["low"] > target else "inconclusive"


def _failed_requests(part: Any) -> int:
    """Failed requests a part's load runs counted (wrk's errors and non-2xx answers), over every side."""
    if not isinstance(part, dict):
        return 0
    return sum(int(side.get("failed", 0)) for side in part.values() if isinstance(side, dict) and "failed" in side)


def _not_measured(results: dict[str, Any], part: str) -> str:
    if why := results.get("failed", {}).get(part):
        return f"the {part} part failed: {why.splitlines()[0]}"
    return f"the {part} part was not run"


def _why(key: str, results: dict[str, Any], summary: dict[str, Any]) -> str:
    """What this run measured about a target it did not meet (figures of this run only)."""
    triton, overhead, hop = results.get("triton"), results.get("overhead"), results.get("hop")
    if key == "ttft_p50_ratio" and (ttft := results.get("ttft")):
        c1, hop_ms = ttft["c1"], (hop or {}).get("gateway", {}).get("p50_ms")
        added = c1["nginx"]["ttft_p50_ms"] - c1["direct"]["ttft_p50_ms"]
        return (
            f"first text {c1['nginx']['ttft_p50_ms']:.1f} ms through nginx against "
            f"{c1['direct']['ttft_p50_ms']:.1f} ms "
            f"straight from Triton at concurrency 1: the path adds {added:.1f} ms to a first token that takes "
            f"{c1['direct']['ttft_p50_ms']:.1f} ms"
            + (f" (the gateway hop alone, against a zero-work model: {hop_ms:.2f} ms p50)" if hop_ms else "")
        )
    if key == "direct_c8_p99_over_p50" and triton:
        c8, stats = triton["c8"], triton["triton_c8"]
        return (
            f"direct Triton at 8: p50 {c8['p50_ms']:.1f} ms, p99 {c8['p99_ms']:.1f} ms, worst {c8['max_ms']:.0f} ms; "
            f"Triton's queue time {stats['queue_ms']:.1f} ms and compute {stats['compute_infer_ms']:.1f} ms "
            f"per request ({triton['instances']} instances)"
        )
    if key == "batching_gain" and triton:
        return f"Triton's batches at 8: {_batches(triton['triton_c8'])}; at 1: {_batches(triton['triton_c1'])}"
    if key.startswith("gateway_added") and overhead:
        paired = overhead["c1_paired"]
        d, g, interval = paired["direct"], paired["gateway"], _added(results, key)
        text = (
            f"{d['requests']:,} direct and {g['requests']:,} gateway requests taken in turn at concurrency 1: "
            f"direct p50 {d['p50_ms']:.2f} / p99 {d['p99_ms']:.2f} ms, gateway p50 {g['p50_ms']:.2f} / "
            f"p99 {g['p99_ms']:.2f} ms"
        )
        if interval["high"] < 0:
            text += " (the direct side measured slower than the path through the gateway, the whole interval below 0)"
        elif interval["low"] <= _target(key) < interval["high"]:
            text += f" (the 95% interval holds the target {_target(key):.2f} ms: the run cannot tell which side it is)"
        text += (
            f"; the gateway's process used {paired['gateway_cpu_ms_per_request']:.2f} ms of CPU per request it "
            "answered (its registry and metrics polling included)"
        )
        if hop:
            text += (
                f"; against a zero-work model the hop alone adds {summary['hop_added_p50_ms']:.2f} ms p50 and "
                f"{hop['gateway']['p99_ms'] - hop['direct']['p99_ms']:.2f} ms p99"
            )
        return text
    if key == "gateway_throughput_ratio_c8" and overhead:
        d, g = overhead["direct"], overhead["gateway"]
        text = f"direct {d['rps_c8']:.0f} req/s (p99 {d['p99_ms_c8']:.0f} ms), gateway {g['rps_c8']:.0f} req/s at 8"
        if summary["gateway_throughput_ratio_c8"] > BROKEN_DIRECT_RATIO:
            text += f": above {BROKEN_DIRECT_RATIO}, the direct side is the broken one"
        return text
    if key == "triton_vs_inprocess_c8" and (inproc := results.get("inprocess")):
        text = (
            f"in-process {inproc['rps_c8']['inprocess']:.0f} req/s (one generate at a time, p50 "
            f"{inproc['p50_ms_c8']['inprocess']:.1f} ms at 8), Triton path {inproc['rps_c8']['triton']:.0f} req/s"
        )
        if triton:
            text += f"; direct Triton {triton['c8']['rps']:.0f} req/s with batches: {_batches(triton['triton_c8'])}"
        return text
    if key == "noop_repro_s" and (pipeline := results.get("pipeline")):
        return (
            f"median of {pipeline['noop_runs']}: {pipeline['noop_repro_s']:.2f} s wall, of which "
            f"{pipeline['noop_repro_cpu_s']:.2f} s CPU; load average {results['load_average'].get('pipeline', 0):.1f} "
            f"on {results['machine']['cores']} cores as the part started"
        )
    if key.startswith("rollback") and (rollback := results.get("rollback")):
        return f"runs {', '.join(f'{s:.1f}' for s in rollback['runs'])} s; errors seen: {rollback['error_samples'][:3]}"
    return "no measurement of its cause in this run"


def _target(key: str) -> float:
    return next(t.target for t in TARGETS if t.key == key)


def _batches(stats: dict[str, Any]) -> str:
    sizes = stats["by_batch_size"]
    parts = [f"{e['executions']} of {size} at {e['compute_infer_ms']:.1f} ms" for size, e in sizes.items()]
    return f"mean {stats['mean_batch']:.2f} ({', '.join(parts) or 'none'})"


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def _verdict_cell(row: dict[str, Any]) -> str:
    return row["verdict"] if row["verdict"] == "met" else f"{row['verdict']}: {row['why']}"


def markdown(results: dict[str, Any], *, sections: bool = True) -> str:
    summary, machine = results["summary"], results["machine"]
    loads = results.get("load_average", {})
    lines = [
        f"Measured by `make bench`, started {machine['started']}: {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['memory_gib']} GiB, {'GPU ' + machine['gpu'] if machine['gpu'] else 'no GPU'}, Python "
        f"{machine['python']}, torch {machine['torch']}; the tiny model. Comparisons alternate their sides over "
        f"rounds of wrk runs (keep-alive); medians; what the gateway adds at concurrency 1 is from requests taken in "
        f"turn, with 95% intervals. The machine is shared: 1-minute load average as each part "
        f"started (this run's own work included): "
        + ", ".join(f"{part} {value:.1f}" for part, value in loads.items())
        + ".",
        "",
        "| target | measured | target | verdict |",
        "|---|---|---|---|",
    ]
    for row in verdicts(results, summary):
        sign = "≤" if row["kind"] == "max" else "≥"
        value = _fmt(row["value"]) if "value" in row else "-"
        if interval := row.get("interval"):
            value += f" (95%: {interval['low']:.2f} to {interval['high']:.2f})"
        lines.append(f"| {row['what']} | {value} | {sign} {_fmt(row['target'])} | {_verdict_cell(row)} |")
    if failed := results.get("failed"):
        lines += ["", "Failed parts: " + "; ".join(f"{part}: {why.splitlines()[0]}" for part, why in failed.items())]
    lines += _triton_lines(results) + _path_lines(results) + _other_lines(results)
    if sections:
        for name, section in results.get("sections", {}).items():
            lines += ["", SECTIONS[name](section).rstrip()]
    return "\n".join(lines) + "\n"


def _triton_lines(results: dict[str, Any]) -> list[str]:
    if not (triton := results.get("triton")):
        return []
    lines = [
        "",
        f"Direct Triton, `{triton['model']}` alone in its own Triton, {triton['instances']} {triton['kind']} "
        f"instances, {triton['rounds']} rounds of {triton['seconds_per_run']:.0f} s:",
        "",
        "| concurrency | req/s | p50 ms | p99 ms | worst ms | mean batch | queue ms/request | compute ms/request |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for level in ("c1", "c8"):
        f, s = triton[level], triton[f"triton_{level}"]
        lines.append(
            f"| {level[1:]} | {f['rps']:.0f} | {f['p50_ms']:.1f} | {f['p99_ms']:.1f} | {f['max_ms']:.0f} | "
            f"{s['mean_batch']:.2f} | {s['queue_ms']:.2f} | {s['compute_infer_ms']:.2f} |"
        )
    sizes = triton["triton_c8"]["by_batch_size"]
    lines += [
        "",
        "Triton's statistics at concurrency 8, per batch size (executions, compute per execution): "
        + ", ".join(f"{size}: {e['executions']} x {e['compute_infer_ms']:.1f} ms" for size, e in sizes.items())
        + ".",
        "Memory per instance (each backend stub, RSS / PSS): "
        + ", ".join(f"{m['rss_mib']} / {m['pss_mib']} MiB" for m in triton["memory"])
        + ".",
    ]
    return lines


def _path_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    if overhead := results.get("overhead"):
        lines += [
            "",
            f"Through the serving stack (the champion in the stack's Triton), {overhead['rounds']} rounds of "
            f"{overhead['seconds_per_run']:.0f} s:",
            "",
            "| path | p50 ms (c1) | p99 ms (c1) | req/s (c1) | req/s (c8) | p99 ms (c8) |",
            "|---|---|---|---|---|---|",
        ]
        for name, label in (
            ("direct", "Triton directly (KServe v2)"),
            ("gateway", "gateway"),
            ("nginx", "nginx + gateway"),
        ):
            r = overhead[name]
            lines.append(
                f"| {label} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['rps_c1']:.0f} | {r['rps_c8']:.0f} | "
                f"{r['p99_ms_c8']:.0f} |"
            )
        paired = overhead["c1_paired"]
        d, g, added = paired["direct"], paired["gateway"], paired["added"]
        lines += [
            "",
            f"What the gateway adds at concurrency 1 (the targets), from requests to direct Triton and to the gateway "
            f"taken in turn for {paired['seconds']:.0f} s, each on its own keep-alive connection: direct "
            f"{d['requests']:,} requests, p50 {d['p50_ms']:.2f} / p99 {d['p99_ms']:.2f} ms; gateway {g['requests']:,}, "
            f"p50 {g['p50_ms']:.2f} / p99 {g['p99_ms']:.2f} ms; added "
            + ", ".join(
                f"{label} {a['value']:.2f} ms (95% bootstrap interval {a['low']:.2f} to {a['high']:.2f})"
                for label, a in added.items()
            )
            + ".",
        ]
    if hop := results.get("hop"):
        d, g = hop["direct"], hop["gateway"]
        lines += [
            "",
            f"The hop alone, against a zero-work model: direct p50 {d['p50_ms']:.2f} / p99 {d['p99_ms']:.2f} ms, "
            f"{d['rps_c8']:.0f} req/s at 8; through the gateway p50 {g['p50_ms']:.2f} / p99 {g['p99_ms']:.2f} ms, "
            f"{g['rps_c8']:.0f} req/s at 8.",
        ]
    if inproc := results.get("inprocess"):
        lines += [
            "",
            f"transformers.generate in a FastAPI handler, one request at a time, the same weights "
            f"(`{inproc['weights']}`, {inproc['quantization']}, computing in {inproc['compute_dtype']}) as the "
            f"Triton side: {inproc['rps_c8']['inprocess']:.0f} req/s at concurrency 8, against "
            f"{inproc['rps_c8']['triton']:.0f} req/s for nginx + gateway + Triton ({inproc['ratio']:.2f}x).",
        ]
    return lines


def _other_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    if quant := results.get("quantization"):
        lines += [
            "",
            "| quantization | weight bytes | golden accuracy (in-process) | served accuracy | served p50 ms (c1) |",
            "|---|---|---|---|---|",
        ]
        for method in ("none", "bnb-int8", "bnb-nf4"):
            row = quant["pipeline"][method]
            lines.append(
                f"| {method} | {row['weights_bytes']:,} | {row['golden_accuracy']:.1%} | "
                f"{row['served_accuracy']:.1%} | {quant['served_p50_ms'][method]:.1f} |"
            )
    if (ttft := results.get("ttft")) and ttft.get("measured"):
        lines += [
            "",
            f"Time to first token, streamed answers ({ttft['rounds']} alternated rounds of "
            f"{ttft['seconds_per_run']:.0f} s):",
            "",
            "| path | concurrency | TTFT p50 ms | TTFT p95 ms | answer p50 ms | output tokens/s |",
            "|---|---|---|---|---|---|",
        ]
        for level in ("c1", "c8"):
            for side, label in (("nginx", "nginx + gateway"), ("direct", "Triton `generate_stream`")):
                f = ttft[level][side]
                lines.append(
                    f"| {label} | {level[1:]} | {f['ttft_p50_ms']:.1f} | {f['ttft_p95_ms']:.1f} | "
                    f"{f['e2e_p50_ms']:.1f} | {f['output_tokens_per_s']:.0f} |"
                )
    if roll := results.get("rollback"):
        lines += [
            "",
            f"Rollback, {len(roll['runs'])} runs under synthetic traffic through nginx: fault onset to canary weight "
            f"0 in {', '.join(f'{s:.1f}' for s in roll['runs'])} s; {roll['client_errors']} client-visible errors in "
            f"{roll['requests']:,} requests.",
        ]
    if pipeline := results.get("pipeline"):
        lines += [
            "",
            f"Pipeline: a fresh copy's full `dvc repro` {pipeline['full_repro_s']:.0f} s; no-op "
            f"{pipeline['noop_repro_s']:.2f} s ({pipeline['noop_repro_cpu_s']:.2f} s CPU).",
        ]
    if results.get("bench_s") is not None:
        lines.append(f"Whole benchmark: {results['bench_s']:.0f} s.")
    return lines


def plots(results: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    if (overhead := results.get("overhead")) and (inproc := results.get("inprocess")):
        names, labels = ["direct", "gateway", "nginx"], ["Triton", "gateway", "nginx+gateway"]
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
        x = range(len(names))
        left.bar([i - 0.2 for i in x], [overhead[n]["p50_ms"] for n in names], 0.4, label="p50")
        left.bar([i + 0.2 for i in x], [overhead[n]["p99_ms"] for n in names], 0.4, label="p99")
        left.set_xticks(list(x), labels)
        left.set_ylabel("ms at concurrency 1")
        left.legend()
        throughput = [*(overhead[n]["rps_c8"] for n in names), inproc["rps_c8"]["inprocess"]]
        right.bar([*labels, "in-process"], throughput)
        right.set_ylabel("req/s at concurrency 8")
        fig.tight_layout()
        files.append(out / "latency_throughput.png")
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    if quant := results.get("quantization"):
        methods = ["none", "bnb-int8", "bnb-nf4"]
        table = quant["pipeline"]
        fig, axes = plt.subplots(1, 3, figsize=(9, 3))
        axes[0].bar(methods, [table[m]["weights_bytes"] / 1e6 for m in methods])
        axes[0].set_title("weights (MB)")
        axes[1].bar(methods, [table[m]["golden_accuracy"] * 100 for m in methods])
        axes[1].set_ylim(90, 100)
        axes[1].set_title("golden accuracy (%)")
        axes[2].bar(methods, [quant["served_p50_ms"][m] for m in methods])
        axes[2].set_title("served p50 (ms)")
        fig.tight_layout()
        files.append(out / "quantization.png")
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    if roll := results.get("rollback"):
        fig, axis = plt.subplots(figsize=(5, 3))
        axis.bar([str(i + 1) for i in range(len(roll["runs"]))], roll["runs"])
        axis.axhline(10, color="red", linestyle="--", label="target 10 s")
        axis.set_xlabel("run")
        axis.set_ylabel("fault onset to weight 0 (s)")
        axis.legend()
        fig.tight_layout()
        files.append(out / "rollback.png")
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    return files


def collect_sections(out: Path) -> dict[str, Any]:
    """Every ``out/<name>.json`` a renderer in ``SECTIONS`` knows, so results.json holds what the report shows."""
    return {name: json.loads(path.read_text()) for name in SECTIONS if (path := out / f"{name}.json").is_file()}


def write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    for stale in out.glob("*.png"):
        if stale.stem not in SECTIONS:  # a section's plot is its own command's
            stale.unlink()  # a plot this run did not draw must not stay beside its report
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
    body = markdown(results, sections=False).replace("](", "](bench/")  # sections have README markers of their own
    audit = (
        "Dependency audit: `make audit` (pip-audit of requirements.lock) runs in CI's `audit` job; the "
        "machines these figures come from reach only a package mirror without a vulnerability API, so no "
        "audit result is recorded here."
    )
    readme.write_text(
        f"{head}{START}\n{body}\n{audit}\n\nThe half-second batching stall, its cause (traced, in Triton's "
        "source) and the instance count that removes it: [docs/performance.md](docs/performance.md). Plots and "
        "every number: "
        f"[bench/REPORT.md](bench/REPORT.md).\n{END}{tail}"
    )
