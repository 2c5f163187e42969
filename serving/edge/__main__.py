"""``python -m serving.edge``: run the nginx edge in the foreground over the gateway replicas."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from pydantic import ValidationError

from serving.edge.launcher import Edge, EdgeError
from serving.edge.settings import EdgeSettings


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.edge", description=__doc__)
    parser.add_argument("--run-dir", type=Path, default=Path(".run/nginx"), help="config, pid, logs, temp files")
    parser.add_argument("--check", action="store_true", help="render and check the config (nginx -t), then exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = EdgeSettings()
    except ValidationError as exc:
        print(f"serving.edge: bad EDGE_* settings:\n{exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop)
    edge = Edge(settings, args.run_dir.resolve())
    try:
        if args.check:
            from serving.edge.launcher import write_config

            print(f"nginx config OK: {write_config(settings, args.run_dir.resolve())}")
            return 0
        edge.start()
        print(f"edge ready on {edge.url}, internal {edge.internal_url} (logs: {args.run_dir}/access.log)", flush=True)
        while edge.is_running():
            time.sleep(1)
        print("serving.edge: nginx exited; see its error.log", file=sys.stderr)
        return 1
    except EdgeError as exc:
        print(f"serving.edge: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        edge.stop()


if __name__ == "__main__":
    sys.exit(main())
