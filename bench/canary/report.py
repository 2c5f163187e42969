"""Figures of ``make canary-eval``: per class and rate, the verdicts and how long they took; targets; plot."""

from __future__ import annotations

import math
import platform
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench.canary.simulate import CLASSES
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
_BOUNDS = {key: bound for key, _, bound in TARGETS}
#: What the errors +5 points target asks of any rule: the class's increase, its p95 within the target's
#: seconds, at the A/A target's false-rollback limit.
FIVE_POINTS = next(c.error_increase for c in CLASSES if c.name == "errors +5 pts")
FIVE_LIMIT_S, FIVE_POWER, AA_LIMIT = _BOUNDS["errors_5pt_rollback_p95_s"], 0.95, _BOUNDS["aa_false_rollback_max"]
START, END = "<!-- canary-eval:start (make canary-eval writes this section) -->", "<!-- canary-eval:end -->"


def _p(values: list[float], q: float) -> float:
    """A percentile where an undecided or wrong verdict counts as never (inf)."""
    if not values:
        return math.nan
    return float(np.percentile(np.array(values, dtype=np.float64), q, method="higher"))


def ump_power(n: int, p0: float, p1: float, alpha: float) -> float:
    """Power of the most powerful level-``alpha`` test of "error rate ``p0``" against ``p1 > p0`` on ``n``
    requests: the one-sided binomial test, randomized at its cut-off (Neyman-Pearson), with ``p0`` known."""
    from scipy.stats import binom

    cut = 0  # the least cut with P0(X > cut) <= alpha
    while binom.sf(cut, n, p0) > alpha:
        cut += 1
    at = binom.pmf(cut, n, p0)
    share = (alpha - binom.sf(cut, n, p0)) / at if at > 0 else 0.0
    return float(binom.sf(cut, n, p1) + min(share, 1.0) * binom.pmf(cut, n, p1))


def least_requests(p0: float, increase: float, alpha: float, power: float, limit: int = 100_000) -> int:
    """The fewest canary requests on which any rule with false rollbacks at most ``alpha`` can catch
    ``p0 + increase`` with probability ``power``: even one that knows the champion's rate exactly and
    looks once (``ump_power`` never falls as ``n`` grows, so the first ``n`` that reaches it is the bound)."""
    low, high = 1, 1
    while ump_power(high, p0, p0 + increase, alpha) < power:
        low, high = high + 1, high * 2
        if high > limit:
            raise ValueError(f"no n <= {limit} gives power {power} at p0={p0}, +{increase}")
    while low < high:
        mid = (low + high) // 2
        if ump_power(mid, p0, p0 + increase, alpha) >= power:
            high = mid
        else:
            low = mid + 1
    return high


def five_points_bound(policy: RolloutPolicy, rate: float, base_rates: tuple[float, ...]) -> dict[str, Any]:
    """Per champion error rate: the fewest seconds any rule needs at the policy's first step to roll
    back errors +5 points (p95) with at most 1% A/A false rollbacks, and the least first step that
    would let it do so within the target's 30 s. A bound, not a simulation: it ignores warm-up,
    repeated looks and the champion's own noise, which only make a real rule slower."""
    first = policy.steps[0]
    out: dict[str, Any] = {"first_step_percent": first, "rate": rate}
    for p0 in base_rates:
        n = least_requests(p0, FIVE_POINTS, AA_LIMIT, FIVE_POWER)
        out[f"{p0:.3f}"] = {
            "requests": n,
            "seconds_at_first_step": n / (rate * first / 100),
            "least_first_step_percent_for_30_s": min(100.0, 100 * n / (rate * FIVE_LIMIT_S)),
        }
    return out


def _bound_rows(bound: dict[str, Any]) -> dict[str, Any]:
    """``five_points_bound``'s per champion error rate entries (keyed ``"0.010"``), without its metadata."""
    return {k: v for k, v in bound.items() if k[0].isdigit()}


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
        "errors_5pt_bound": five_points_bound(policy, HEADLINE_RATE, tuple(float(k) for k in by_base)),
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
    bound = summary.get("errors_5pt_bound") or {}
    for key, value in _bound_rows(bound).items():
        least = _s(value["seconds_at_first_step"])
        lines.append(
            f"errors +5 pts from a {float(key):.1%} champion: no rule can beat {least} s "
            f"at a {bound['first_step_percent']:g}% first step ({value['requests']} canary requests); "
            f"{FIVE_LIMIT_S:g} s needs a first step >= {value['least_first_step_percent_for_30_s']:.1f}%"
        )
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
    bound = summary.get("errors_5pt_bound") or {}
    if rows := _bound_rows(bound):
        out += [
            "",
            f"The least any rule could do (computed, not simulated): at a {bound['first_step_percent']:g}% first "
            f"step of {bound['rate']:g} req/s, rolling back errors +5 points in {FIVE_POWER:.0%} of rollouts with "
            f"at most {AA_LIMIT:.0%} false rollbacks takes at least "
            + ", ".join(
                f"{v['requests']} canary requests ({_s(v['seconds_at_first_step'])} s) from a {float(k):.1%} champion"
                for k, v in rows.items()
            )
            + ", even for a rule that knows the champion's error rate exactly and looks once (the one-sided "
            f"binomial test, the most powerful there is). {FIVE_LIMIT_S:g} s would need a first step of at least "
            + ", ".join(f"{v['least_first_step_percent_for_30_s']:.1f}%" for v in rows.values())
            + " respectively.",
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
