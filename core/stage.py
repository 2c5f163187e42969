"""The one exception a stage raises for a problem a person must fix; ``run_stage`` turns it into exit 1."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

log = logging.getLogger("pipelines")


class StageError(Exception):
    """A stage cannot go on: the message names the input, the rule and what to do."""


def run_stage(name: str, body: Callable[[], str]) -> int:
    """Run a stage body, print its one-line summary, map ``StageError`` to a clear exit 1."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # bitsandbytes warns on every CPU load that an optional hub kernel is absent; the CPU path is fine.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # GX narrates its own bookkeeping at INFO; the suite runner logs the outcome that matters.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    try:
        summary = body()
    except StageError as exc:
        sys.stderr.write(f"{name}: error: {exc}\n")
        return 1
    sys.stdout.write(f"{name}: {summary}\n")
    return 0
