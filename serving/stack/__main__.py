"""``python -m serving.stack up|down|status`` (``make up``, ``make down``, ``make status``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from core.ports import DEFAULT, url
from serving.stack import (
    ROOT,
    STACK_FILE,
    StackError,
    StackSettings,
    down,
    no_champion,
    no_champion_advice,
    recorded_names,
    running_pid,
    serving_state,
    up,
    wait_for_champion,
)


def _up(run_dir: Path) -> int:
    try:
        settings = StackSettings()
        stack = up(run_dir)
    except (StackError, ValidationError) as exc:
        print(f"make up: {exc}", file=sys.stderr)
        return 1
    edge = next(s for s in stack if s.name == "nginx")
    mlflow = next(s for s in stack if s.name == "mlflow")
    print(f"\nOpenAI API: {edge.url}/v1 (public); status page, metrics and admin API: {edge.extra['internal']}/")
    print(f"admin token: {run_dir / 'admin-token'} (or GATEWAY_ADMIN_TOKEN); `make down` stops everything")
    try:
        state = wait_for_champion(stack, settings.champion_timeout_s)
    except StackError as exc:
        print(f"make up: {exc}", file=sys.stderr)
        return 1
    if not state.answered:
        print(no_champion_advice(mlflow.url))
        return 0
    print(f"serving: champion v{state.champion} answers through nginx at {edge.url}/v1")
    return 0


def _status(run_dir: Path) -> int:
    records = {}
    for name in recorded_names(run_dir):
        pid = running_pid(run_dir, name)
        try:
            records[name] = json.loads((run_dir / f"{name}.pid").read_text()) if pid else {}
        except (OSError, ValueError):
            records[name] = {}
        running = f"running (pid {pid})" if pid else "stopped"
        where = records[name].get("url", "")
        if "internal" in records[name]:
            where += f" (internal {records[name]['internal']})"
        print(f"{name:<11} {running:<22} {where}")
    gateways = [r["url"] for name, r in records.items() if name.startswith("gateway-") and r]
    if not gateways or not records.get("nginx"):
        print("\nthe stack is not running: `make up` starts it")
        return 0
    state = serving_state(gateways, records["nginx"]["url"], "", ask=False)
    mlflow_url = records.get("mlflow", {}).get("url", url(DEFAULT.mlflow))
    if no_champion(state, mlflow_url):
        print("\n" + no_champion_advice(mlflow_url))
    elif state.reason == "ready":
        print(f"\nserving: champion v{state.champion} is ready on every gateway")
    else:
        print(f"\nnot serving yet: {state.reason}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.stack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--run-dir", type=Path, default=ROOT / ".run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per readiness probe is noise here
    run_dir = args.run_dir.resolve()
    if args.command == "up":
        return _up(run_dir)
    if args.command == "down":
        stopped = down(run_dir)
        (run_dir / STACK_FILE).unlink(missing_ok=True)
        print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
        return 0
    return _status(run_dir)


if __name__ == "__main__":
    sys.exit(main())
