"""``python -m serving.stack up|down|status`` (``make up``, ``make down``, ``make status``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from serving.stack import ROOT, StackError, down, running_pid, services, up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.stack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--run-dir", type=Path, default=ROOT / ".run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per readiness probe is noise here
    run_dir = args.run_dir.resolve()
    if args.command == "up":
        try:
            stack = up(run_dir)
        except StackError as exc:
            print(f"make up: {exc}", file=sys.stderr)
            return 1
        print(f"\nserving on {stack[-1].url} (OpenAI API at {stack[-1].url}/v1, status page at {stack[-1].url}/)")
        print(f"admin token: {run_dir / 'admin-token'} (or GATEWAY_ADMIN_TOKEN); `make down` stops everything")
        return 0
    if args.command == "down":
        stopped = down(run_dir)
        print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
        return 0
    for service in services(run_dir):
        pid = running_pid(run_dir, service.name)
        state = f"running (pid {pid})" if pid else "stopped"
        print(f"{service.name:<11} {state:<22} {service.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
