"""The one exception a stage raises for a problem a person must fix; ``run_stage`` turns it into exit 1."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

log = logging.getLogger("pipelines")


class StageError(Exception):
    """A stage cannot go on: the message names the input, the rule and what to do."""


def describe_os_error(exc: OSError) -> str:
    """One line for an OS error, also for ``shutil.Error`` (copytree's list of every failed file)."""
    import shutil

    # Notes say what was being built (core.files.atomic_dir adds the output's path to its errors).
    notes = "".join(f" ({note})" for note in getattr(exc, "__notes__", ()))
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
        failures = exc.args[0]
        source, dest, why = failures[0]
        more = f" (and {len(failures) - 1} more files)" if len(failures) > 1 else ""
        return f"cannot copy {source} to {dest}: {why}{more}{notes}"
    where = f" {exc.filename}" if exc.filename else ""
    return f"cannot write{where}: {exc.strerror or exc}{notes}"


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
    except OSError as exc:
        # A full disk, a missing permission: the machine's problem, named, not a traceback. Stages
        # write through temp folders, so the previous output is still in place.
        sys.stderr.write(f"{name}: error: {describe_os_error(exc)}; the previous output is untouched\n")
        return 1
    sys.stdout.write(f"{name}: {summary}\n")
    return 0
