"""``python -m serving.triton``: run Triton in the foreground over a model repository (``make triton``).

Ports and model control come from ``TRITON_*`` settings; Ctrl-C, SIGTERM or SIGHUP (the terminal
closing) stops the server cleanly, and if this process is killed outright the launcher's watchdog
stops it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from pydantic import ValidationError

from serving.triton.launcher import TritonError, TritonServer
from serving.triton.settings import TritonSettings


class _Stop(Exception):  # noqa: N818 (a signal, not an error)
    """Raised by the signal handler to leave the follow loop."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def _follow(server: TritonServer) -> int:
    """Copy the server log to stdout until the server exits; return its exit code."""
    with server.log_path.open("rb") as log:
        while True:
            chunk = log.read(65536)
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                continue
            if not server.is_running():
                return 1
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    """Start Triton, wait until ready, stream its log, stop on Ctrl-C, SIGTERM or SIGHUP."""
    parser = argparse.ArgumentParser(prog="python -m serving.triton", description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, required=True, help="Triton model repository")
    parser.add_argument(
        "--load-model",
        action="append",
        default=[],
        metavar="NAME",
        help="model to load at start in explicit mode (repeatable; default: every model)",
    )
    parser.add_argument("--run-dir", type=Path, default=None, help="folder for the backend copy and log")
    parser.add_argument("--log-file", type=Path, default=None, help="server log (default: <run-dir>/tritonserver.log)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = TritonSettings()
    except ValidationError as exc:
        print(f"serving.triton: bad TRITON_* settings:\n{exc}", file=sys.stderr)
        return 2
    load = args.load_model or (["*"] if settings.model_control_mode == "explicit" else [])
    server = TritonServer(
        args.model_repository, settings, run_dir=args.run_dir, log_path=args.log_file, load_models=load
    )
    for stop_signal in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop_signal, _raise_stop)
    try:
        server.start()
        print(
            f"Triton ready: http {server.http_url}  grpc {server.grpc_url}  metrics {server.metrics_url}",
            flush=True,
        )
        return _follow(server)
    except TritonError as exc:
        print(f"serving.triton: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, _Stop):
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
