"""The rollout controller's last report as a person reads it on the status page.

The controller sums every gateway replica's counters and publishes what it judged
(``registry.controller_status``); the page shows those fleet-wide figures rather than the counters
of whichever replica the browser reached. The report's figures are rendered generically: any
``champion_<metric>`` / ``canary_<metric>`` pair, ``<metric>_ratio`` and nested
``{metric: {column: value}}`` mapping becomes a table row keyed by the metric's name, labelled in
words where the name is known and spelled out where it is not, so a metric the controller starts
to report (time to first token, answer quality from probes) appears without a page change.
Times are UTC text, the lease holder is spelled out, and the rollout gets one state word.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

SIDES = ("champion", "canary")
RATIO = "canary ÷ champion"
#: The controller republishes at least every 5 s (ControllerSettings.status_every_s); a report this
#: old means no controller is acting on the rollout.
STALE_AFTER_S = 60.0

#: Labels for the names the controller reports today; anything else is spelled out by ``label``.
_LABELS = {
    "requests": "Requests",
    "errors": "Errors",
    "error_rate": "Error rate",
    "p50_ms": "Latency p50",
    "p95_ms": "Latency p95",
    "p99_ms": "Latency p99",
}
#: Known rows first, in the order a person compares them; unknown ones follow by name.
_ORDER = ("requests", "errors", "error_rate", "p50_ms", "p95_ms", "p99_ms")
_WORDS = {
    "ttft": "time to first token",
    "tpot": "time per output token",
    "itl": "inter-token latency",
    "p50": "p50",
    "p95": "p95",
    "p99": "p99",
}
_UNIT_WORDS = {"ms", "s", "pct", "percent"}


class FigureRow(BaseModel):
    metric: str
    label: str
    #: Column -> raw value and column -> the text shown.
    values: dict[str, float]
    cells: dict[str, str]


class FleetFigures(BaseModel):
    columns: list[str]
    rows: list[FigureRow]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def label(metric: str) -> str:
    """A metric name in words: ``ttft_p95_ms`` is "Time to first token p95"."""
    if metric in _LABELS:
        return _LABELS[metric]
    words = [_WORDS.get(part, part) for part in metric.split("_") if part and part not in _UNIT_WORDS]
    text = " ".join(words) or metric
    return text[0].upper() + text[1:]


def _unit(metric: str, column: str) -> str:
    if column == RATIO:
        return "ratio"
    # A version's figure is in the metric's unit; another column (a p-value, say) names its own.
    name = metric if column in (*SIDES, "value") else column
    if name.endswith("ratio"):
        return "ratio"
    if name.endswith("_ms"):
        return "ms"
    if name.endswith("_s"):
        return "s"
    if name.endswith(("rate", "accuracy", "quality", "agreement", "share")):
        return "percent"
    if name in ("requests", "errors") or name.endswith(("_requests", "_errors", "count")):
        return "count"
    return "plain"


def show(value: float, unit: str) -> str:
    """One figure as text: counts whole, rates in percent, times in ms, ratios with a times sign."""
    if unit == "count":
        return f"{value:,.0f}"
    if unit == "percent":
        return f"{100 * value:.2f}%"
    if unit == "ms":
        return f"{value:,.1f} ms"
    if unit == "s":
        return f"{value:,.2f} s"
    if unit == "ratio":
        return f"{value:.2f}×"
    return f"{value:.4g}"


def figure_table(figures: Mapping[str, Any]) -> FleetFigures:
    """The report's figures as rows (one per metric) and columns (champion, canary, their ratio, others)."""
    table: dict[str, dict[str, float]] = {}
    ratios: dict[str, float] = {}
    for key, raw in figures.items():
        if isinstance(raw, Mapping):  # already per metric: {"p95_ms": {"champion": 40, "canary": 44}}
            cells = {str(column): v for column, value in raw.items() if (v := _number(value)) is not None}
            if cells:
                table.setdefault(str(key), {}).update(cells)
            continue
        value = _number(raw)
        if value is None:
            continue
        side = next((s for s in SIDES if key.startswith(f"{s}_")), None)
        if side is not None:
            table.setdefault(key.removeprefix(f"{side}_"), {})[side] = value
        elif key.endswith("_ratio"):
            ratios[key.removesuffix("_ratio")] = value
        else:
            table.setdefault(key, {})["value"] = value
    for metric, value in ratios.items():
        # ``p95_ratio`` compares ``canary_p95_ms`` with ``champion_p95_ms``.
        target = next((m for m in (metric, f"{metric}_ms", f"{metric}_s") if m in table), metric)
        table.setdefault(target, {})[RATIO] = value
    extra = sorted({column for cells in table.values() for column in cells} - {*SIDES, RATIO})
    columns = [c for c in (*SIDES, RATIO) if any(c in cells for cells in table.values())] + extra

    def order(metric: str) -> tuple[int, str]:
        return (_ORDER.index(metric) if metric in _ORDER else len(_ORDER), metric)

    rows = [
        FigureRow(
            metric=metric,
            label=label(metric),
            values=cells,
            cells={column: show(v, _unit(metric, column)) for column, v in cells.items()},
        )
        for metric, cells in sorted(table.items(), key=lambda item: order(item[0]))
    ]
    return FleetFigures(columns=columns, rows=rows)


def readable_time(at: Any) -> str | None:
    """An epoch or ISO time as ``2026-12-04 21:12:05 UTC``; None when there is none."""
    if (epoch := _number(at)) is not None:
        when = datetime.fromtimestamp(epoch, UTC)
    elif isinstance(at, str):
        try:
            when = datetime.fromisoformat(at)
        except ValueError:
            return at
        when = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    else:
        return None
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


_HOLDER = re.compile(r"(?P<who>.+?) (?P<host>[^\s:]+):(?P<pid>\d+)")


def readable_holder(holder: Any) -> str | None:
    """``rollout-controller web-1:4242`` as "rollout-controller on web-1 (process 4242)"."""
    if not isinstance(holder, str) or not holder:
        return None
    match = _HOLDER.fullmatch(holder)
    if match is None:
        return holder
    return f"{match['who']} on {match['host']} (process {match['pid']})"


def _age_s(at: Any, now: float) -> float | None:
    epoch = _number(at)
    if epoch is None and isinstance(at, str):
        try:
            parsed = datetime.fromisoformat(at)
        except ValueError:
            return None
        epoch = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    return None if epoch is None else max(0.0, now - epoch)


#: Report keys the page shows in their own places; any other key is listed under "more".
_SHOWN = {"holder", "phase", "at", "figures", "metrics", "verdict", "failed_checks", "unreachable_gateways"}
#: Keys the cards above already show (from the registry itself, the source of truth).
_ON_THE_CARDS = {"canary", "weight"}


def controller_view(report: Mapping[str, Any] | None, now: float) -> dict[str, Any] | None:
    """The report with readable time and holder, the fleet's figures as a table, the rest as text."""
    if report is None:
        return None
    figures: dict[str, Any] = {}
    for key in ("figures", "metrics"):
        if isinstance(report.get(key), Mapping):
            figures.update(report[key])
    age = _age_s(report.get("at"), now)
    more = {
        label(str(key)): _text(value)
        for key, value in sorted(report.items())
        if key not in _SHOWN | _ON_THE_CARDS and value not in (None, [], {}, "")
    }
    return {
        "phase": report.get("phase"),
        "holder": readable_holder(report.get("holder")),
        "at": readable_time(report.get("at")),
        "age_s": None if age is None else round(age),
        "stale": age is not None and age > STALE_AFTER_S,
        "verdict": report.get("verdict"),
        "failed_checks": report.get("failed_checks"),
        "unreachable_gateways": list(report.get("unreachable_gateways") or []),
        "fleet": figure_table(figures).model_dump() if figures else None,
        "more": more,
    }


def _text(value: Any) -> str:
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_text(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_text(v) for v in value)
    return str(value)


_PHASE_WORDS = (
    ("analysing", "analysing"),
    ("starting", "starting"),
    ("loading", "starting"),
    ("waiting", "starting"),
    ("paused", "paused"),
    ("idle", "idle"),
)


def rollout_state(paused: bool, canary: int | None, controller: Mapping[str, Any] | None) -> tuple[str, str]:
    """One word for the rollout (idle, paused, starting, analysing, unattended) and a line saying why.

    The registry decides paused and idle (it is the source of truth); the controller's phase says
    what happens to a canary, unless no controller reports, or its report is stale.
    """
    phase = str(controller.get("phase") or "") if controller else ""
    if paused:
        return "paused", "the rollout is paused in the registry: the weight stays where it is"
    if canary is None:
        return "idle", "no canary: the champion takes all traffic"
    if controller is None:
        return "unattended", "a canary takes traffic, but no rollout controller has reported"
    if controller.get("stale"):
        return "unattended", f"the controller's last report is {controller.get('age_s')} s old ({phase})"
    word = next((w for prefix, w in _PHASE_WORDS if phase.startswith(prefix)), None)
    return (word, phase) if word else ("unattended", f"the controller says: {phase}")
