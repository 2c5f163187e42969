"""``python -m demo`` (``make demo`` after ``dvc repro``): the journey, a table of its steps, a JSON line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from core.processes import exit_on_sigterm
from demo.journey import run
from demo.scratch import ScratchError
from serving.stack import ROOT, StackError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=ROOT / ".run" / "demo")
    args = parser.parse_args(argv)
    exit_on_sigterm()  # a stopped demo stops its scratch stack
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "mlflow", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started = time.monotonic()
    try:
        result = run(args.run_dir.resolve())
    except (ScratchError, StackError) as exc:
        print(f"make demo: {exc}\n(logs: {args.run_dir}/logs/)", file=sys.stderr)
        return 1
    summary = {**result["summary"], "journey_s": round(time.monotonic() - started, 1)}
    (args.run_dir / "journey.json").write_text(json.dumps({**result, "summary": summary}, indent=2) + "\n")
    print(json.dumps(summary, sort_keys=True))
    ok = summary.get("client_errors") == 0 and summary.get("rolled_back") is not None
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
