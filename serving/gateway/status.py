"""The status page ``GET /`` and the JSON it polls, ``GET /status.json``.

Champion, canary, weight and the rollout's one state word; the whole fleet's figures as the rollout
controller last summed them over every gateway replica (``serving.gateway.fleet``); the registry's
recent events (every action with who, why and the figures the controller decided on); whether
MLflow and Triton answer; and, folded away, this replica's own counters (they match its
``/metrics``, one replica of several). The page is one self-contained HTML document (no external
assets) that re-renders from ``/status.json`` every two seconds, writing text only through
``textContent`` (reasons are free text).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from starlette.responses import HTMLResponse

from serving.gateway.faults import Faults
from serving.gateway.fleet import controller_view, rollout_state
from serving.gateway.metrics import Metrics, Window
from serving.gateway.reconcile import Health, Reconciler, View
from serving.telemetry import RETRIES


@cache
def page_html() -> str:
    """The page (read on first request, not at import)."""
    return (Path(__file__).parent / "status.html").read_text(encoding="utf-8")


def _when(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _health(health: Health) -> dict[str, Any]:
    return {
        "reachable": health.reachable,
        "error": health.error,
        "last_ok": _when(health.last_ok),
        "down_since": _when(health.down_since),
    }


def _roles(view: View, version: int) -> list[str]:
    aliases = view.state.aliases if view.state is not None else {}
    return sorted(alias for alias, v in aliases.items() if v == version)


def snapshot(view: View, metrics: Metrics, window: Window, faults: Faults) -> dict[str, Any]:
    """Everything the page shows, as JSON."""
    windowed, totals, span = window.figures()
    aliases = view.state.aliases if view.state is not None else {}
    versions = sorted(set(windowed) | set(view.ready) | set(aliases.values()))
    registry = _health(view.registry)
    if not view.registry.reachable and view.state is not None:
        registry["note"] = "MLflow is unreachable: serving the last known split"
    controller = controller_view(view.controller, time.time())
    paused = view.state.paused if view.state is not None else False
    state, why = rollout_state(paused, aliases.get("canary"), controller)
    return {
        "model": view.model,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "champion": aliases.get("champion"),
        "canary": aliases.get("canary"),
        "candidate": aliases.get("candidate"),
        "previous_champion": aliases.get("previous-champion"),
        "weight": view.state.canary_weight if view.state is not None else 0,
        "paused": paused,
        "rollout": {"state": state, "detail": why},
        "generation": view.state.generation if view.state is not None else None,
        "registry": registry,
        "triton": {**_health(view.triton), "ready": sorted(view.ready)},
        "window_s": window.window_s,
        "window_span_s": round(span, 1),
        "retries": metrics.registry.get_sample_value(RETRIES) or 0.0,
        "versions": [
            {
                "version": version,
                "roles": _roles(view, version),
                "ready": version in view.ready,
                "window": windowed[version].model_dump() if version in windowed else None,
                "total": totals[version].model_dump() if version in totals else None,
            }
            for version in versions
        ],
        "history": [
            {
                "at": event.at.isoformat(timespec="seconds"),
                "action": event.action,
                "version": event.version,
                "actor": event.actor,
                "summary": event.summary,
                "reason": event.reason,
                "figures": event.figures(),
            }
            for event in view.history
        ],
        "controller": controller,
        "faults": [rule.model_dump() for rule in faults.rules()],
    }


def make_router(reconciler: Reconciler, metrics: Metrics, window: Window, faults: Faults) -> APIRouter:
    router = APIRouter()

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html(), headers={"Cache-Control": "no-store"})

    @router.get("/status.json")
    async def status_json() -> dict[str, Any]:
        reconciler.want_controller()
        return snapshot(reconciler.view, metrics, window, faults)

    return router
