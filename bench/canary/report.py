"""Figures of ``make canary-eval``: per class and rate, the verdicts and how long they took; targets; plot."""

from __future__ import annotations

import math
import platform
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from core.rollout_policy import RolloutPolicy

#: The issue's targets: (key, comparison, bound).
TARGETS: tuple[tuple[str, str, float], ...] = (
    ("aa_false_rollback_max", "<=", 0.01),
    ("detect_errors_2pt", ">=", 0.95),
    ("detect_latency_1_3", ">=", 0.95),
    ("detect_tail", ">=", 0.90),
    ("detect_quality_5pt", ">=", 0.95),
    ("errors_5pt_rollback_p95_s", "<=", 30.0),
    ("healthy_promote_p95_s", "<=", 600.0),
)
HEADLINE_RATE = 20.0
START, END = "<!-- canary-eval:start (make canary-eval writes this section) -->", "<!-- canary-eval:end -->"


def _p(values: list[float], q: float) -> float:
    """A percentile where an undecided or wrong verdict counts as never (inf)."""
    if not values:
        return math.nan
    return float(np.percentile(np.array(values, dtype=np.float64), q, method="higher"))


def _row(result: dict[str, Any]) -> dict[str, Any]:
    decision = np.array(result["decision"])
    seconds = np.array([math.nan if s is None else s for s in result["seconds"]], dtype=np.float64)
    weight = np.array([math.nan if w is None else w for w in result["weight"]], dtype=np.float64)
    n = len(decision)
    rolled, promoted = decision == -1, decision == 1
    right = rolled if result["bad"] else promoted
    # Time to the right verdict, wrong or missing verdicts counting as never.
    to_right = np.where(right, seconds, math.inf).tolist()
    steps = Counter(int(w) for w in weight[rolled])
    return {
        "class": result["class"],
        "rate": result["rate"],
        "error_rates": result["error_rates"],
        "rollouts": n,
        "promoted": float(promoted.mean()) if n else math.nan,
        "rolled_back": float(rolled.mean()) if n else math.nan,
        "undecided": float((decision == 0).mean()) if n else math.nan,
        "decision_p50_s": float(np.median(seconds[decision != 0])) if (decision != 0).any() else math.nan,
        "decision_p95_s": _p(seconds[decision != 0].tolist(), 95),
        "right_p95_s": _p(to_right, 95),
        "rollback_p50_s": float(np.median(seconds[rolled])) if rolled.any() else math.nan,
        "rollback_at_step": {str(k): steps[k] for k in sorted(steps)},
    }


def summarize(
    results: list[dict[str, Any]], policy: RolloutPolicy, elapsed_s: float, rollouts: int, horizon_s: float
) -> dict[str, Any]:
    rows = [_row(r) for r in sorted(results, key=lambda r: (r["rate"], r["class"], r["error_rates"]))]

    def find(name: str, rate: float) -> list[dict[str, Any]]:
        return [r for r in results if r["class"] == name and r["rate"] == rate]

    aa = [r for r in rows if r["class"] == "identical"]
    aa_in_scope = [r for r in aa if max(r["error_rates"]) <= 0.01]
    promote_times: list[float] = []
    for r in find("identical", HEADLINE_RATE):
        if max(r["error_rates"]) <= 0.01:
            promote_times += [
                s if d == 1 and s is not None else math.inf for d, s in zip(r["decision"], r["seconds"], strict=True)
            ]
    five = find("errors +5 pts", HEADLINE_RATE)
    five_times = [s if d == -1 and s is not None else math.inf for r in five
                  for d, s in zip(r["decision"], r["seconds"], strict=True)]  # fmt: skip
    by_base: dict[str, float] = {}
    for r in five:
        base = np.array(r["base_error_rate"])
        for value in sorted(set(base.tolist())):
            times = [s if d == -1 and s is not None else math.inf
                     for d, s, b in zip(r["decision"], r["seconds"], base, strict=True) if b == value]  # fmt: skip
            by_base[f"{value:.3f}"] = _p(times, 95)

    def detect(name: str) -> float:
        found = [_row(r) for r in find(name, HEADLINE_RATE)]
        return found[0]["rolled_back"] if found else math.nan

    headline: dict[str, Any] = {
        "aa_false_rollback_max": max(r["rolled_back"] for r in aa_in_scope),
        "detect_errors_2pt": detect("errors +2 pts"),
        "detect_latency_1_3": detect("latency x1.3"),
        "detect_tail": detect("tail: 10% x3"),
        "detect_quality_5pt": detect("answers -5 pts"),
        "healthy_promote_p95_s": _p(promote_times, 95),
        "errors_5pt_rollback_p95_s": _p(five_times, 95),
        "rollouts": sum(r["rows"] for r in results),
        "eval_s": round(elapsed_s, 1),
    }
    verdicts = {}
    for key, op, bound in TARGETS:
        value = headline[key]
        met = value <= bound if op == "<=" else value >= bound
        verdicts[key] = {"value": value, "target": f"{op} {bound:g}", "met": bool(met)}
    headline["targets_met"] = all(v["met"] for v in verdicts.values())
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "policy": policy.model_dump(),
        "rollouts_per_batch": rollouts,
        "horizon_s": horizon_s,
        "rows": rows,
        "aa": [
            {
                "rate": r["rate"],
                "error_rate": r["error_rates"][0],
                "false_rollback": r["rolled_back"],
                "undecided": r["undecided"],
                "promote_p95_s": r["right_p95_s"],
            }
            for r in aa
        ],
        "errors_5pt_rollback_p95_s_by_base_error_rate": by_base,
        "targets": verdicts,
        "headline": {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in headline.items()},
    }


def _s(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "never"
    return f"{value:.0f}"


def table(summary: dict[str, Any]) -> str:
    lines = [
        f"{'canary':<16} {'req/s':>5} {'errors':>9} {'promoted':>9} {'rolled back':>11} {'undecided':>9} "
        f"{'p50 s':>6} {'p95 s':>6}  rollbacks at step",
    ]
    for r in summary["rows"]:
        errors = "/".join(f"{e:.1%}" for e in r["error_rates"])
        steps = ", ".join(f"{k}%: {v}" for k, v in r["rollback_at_step"].items())
        lines.append(
            f"{r['class']:<16} {r['rate']:>5g} {errors:>9} {r['promoted']:>9.1%} {r['rolled_back']:>11.1%} "
            f"{r['undecided']:>9.1%} {_s(r['decision_p50_s']):>6} {_s(r['decision_p95_s']):>6}  {steps}"
        )
    lines.append("")
    for key, verdict in summary["targets"].items():
        value = verdict["value"]
        shown = f"{value:.3f}" if isinstance(value, float) and math.isfinite(value) and value < 10 else _s(value)
        lines.append(f"{key:<28} {shown:>8}  target {verdict['target']:<8} {'met' if verdict['met'] else 'MISSED'}")
    return "\n".join(lines)


def markdown(summary: dict[str, Any]) -> str:
    p = summary["policy"]
    out = [
        f"Measured by `make canary-eval` on {summary['date']} ({summary['machine']}): "
        f"{summary['headline']['rollouts']:,} simulated rollouts judged by the controller's own tick logic "
        f"(`serving.rollout.machine`), {summary['rollouts_per_batch']} per row, horizon "
        f"{summary['horizon_s']:.0f} s, in {summary['headline']['eval_s']:.0f} s. Policy: steps {p['steps']}, "
        f"at least {p['min_step_s']:g} s and {p['min_step_requests']} canary requests per step, alpha "
        f"{p['alpha']:g} per metric, margins {p['error_margin']:.0%} (errors), x{p['latency_margin']:g} (p50), "
        f"x{p['tail_margin']:g} (p95), {p['quality_margin']:.0%} (golden probes, {p['probe_rps']:g}/s).",
        "",
        "| target | measured | target | |",
        "|---|---|---|---|",
    ]
    for key, verdict in summary["targets"].items():
        value = verdict["value"]
        shown = f"{value:.1%}" if key.startswith(("aa_", "detect_")) else (_s(value) + " s")
        out.append(f"| `{key}` | {shown} | {verdict['target']} | {'met' if verdict['met'] else 'missed'} |")
    base = summary["errors_5pt_rollback_p95_s_by_base_error_rate"]
    if base:
        out += [
            "",
            "Errors +5 points at 20 req/s, p95 seconds to the rollback by the champion's error rate: "
            + ", ".join(f"{float(k):.1%}: {_s(v)}" for k, v in base.items())
            + ".",
        ]
    out += [
        "",
        "| canary | req/s | base errors | promoted | rolled back | undecided | median / p95 s to the verdict "
        "| rollbacks at step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        errors = ", ".join(f"{e:.1%}" for e in r["error_rates"])
        steps = ", ".join(f"{k}%: {v}" for k, v in r["rollback_at_step"].items()) or "-"
        out.append(
            f"| {r['class']} | {r['rate']:g} | {errors} | {r['promoted']:.1%} | {r['rolled_back']:.1%} | "
            f"{r['undecided']:.1%} | {_s(r['decision_p50_s'])} / {_s(r['decision_p95_s'])} | {steps} |"
        )
    out += ["", "![verdicts per canary class](bench/canary.png)", ""]
    return "\n".join(out)


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(dict.fromkeys(r["class"] for r in summary["rows"]))
    rates = sorted({r["rate"] for r in summary["rows"]})
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / len(rates)
    for i, rate in enumerate(rates):
        rolled, times = [], []
        for name in classes:
            found = [r for r in summary["rows"] if r["class"] == name and r["rate"] == rate]
            total = sum(r["rollouts"] for r in found)
            rolled.append(sum(r["rolled_back"] * r["rollouts"] for r in found) / max(total, 1))
            times.append(np.nanmedian([r["decision_p50_s"] for r in found]) if found else np.nan)
        x = np.arange(len(classes)) + i * width
        axes[0].bar(x, rolled, width, label=f"{rate:g} req/s")
        axes[1].bar(x, times, width, label=f"{rate:g} req/s")
    for ax, title in ((axes[0], "share rolled back"), (axes[1], "median seconds to the verdict")):
        ax.set_xticks(np.arange(len(classes)) + 0.4 - width / 2)
        ax.set_xticklabels(classes, rotation=40, ha="right", fontsize=8)
        ax.set_title(title)
        ax.legend(fontsize=8)
    axes[0].axhline(0.95, color="grey", lw=0.7, ls="--")
    axes[0].axhline(0.01, color="grey", lw=0.7, ls="--")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def refresh_readme(readme: Path, markdown_text: str) -> None:
    """Replace the README's canary-eval section (between its markers) with this run's figures."""
    text = readme.read_text()
    if START not in text or END not in text:
        return
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{markdown_text}\n{END}{tail}")
