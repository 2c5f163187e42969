"""What git tracks of the pipeline's outputs: exactly the metrics a stage writes, and nothing a fresh
clone lacks the state for (a register.json naming version 5 of a store nobody has)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from typing import Any

import yaml

from tests.conftest import ROOT

_TEMPLATE = re.compile(r"\$\{([^}]+)\}")


def _tracked() -> set[str]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode()
    return {path for path in listed.split("\0") if path and (ROOT / path).exists()}


def _resolve(path: str, params: dict[str, Any]) -> str:
    def lookup(match: re.Match[str]) -> str:
        value: Any = params
        for key in match[1].split("."):
            value = value[key]
        return str(value)

    return _TEMPLATE.sub(lookup, path)


def _declared(kind: str) -> set[str]:
    """Every path the stages declare under ``kind`` (``outs`` or ``metrics``), templates resolved."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    found = set()
    for stage in stages.values():
        for entry in stage.get(kind, []):
            found.add(_resolve(next(iter(entry)) if isinstance(entry, dict) else str(entry), params))
    return found


def stray_metrics(tracked: Iterable[str], written: set[str]) -> list[str]:
    """Tracked files under metrics/ that no stage writes."""
    return sorted(path for path in tracked if path.startswith("metrics/") and path not in written)


def test_every_tracked_metrics_file_is_one_a_stage_writes() -> None:
    written = _declared("metrics")
    assert stray_metrics(_tracked(), written) == []
    assert written <= _tracked(), "a stage's metrics must be committed (dvc metrics diff compares them)"


def test_the_check_flags_a_metrics_file_no_stage_writes() -> None:
    written = _declared("metrics")
    assert "metrics/validate.json" in written
    assert stray_metrics([*sorted(written), "metrics/register.json"], written) == ["metrics/register.json"]


def test_no_other_stage_output_is_tracked() -> None:
    tracked = _tracked()
    for out in _declared("outs"):
        inside = sorted(path for path in tracked if path == out or path.startswith(out.rstrip("/") + "/"))
        assert inside == [], f"the stage output {out} is tracked by git: {inside[:5]}"
