"""``check-config``: every rule over every config a path names; findings sorted by file and line."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from validation.context import CheckContext, Target
from validation.findings import Finding
from validation.pbtxt import ParsedConfig
from validation.repo import ModelIndex, config_paths
from validation.rules_ensemble import check_ensemble
from validation.rules_io import check_io
from validation.rules_model import check_model
from validation.rules_scheduling import check_scheduling

Rule = Callable[[ParsedConfig, CheckContext], Iterable[Finding]]
RULES: Sequence[Rule] = (check_model, check_io, check_scheduling, check_ensemble)


def check_parsed(pc: ParsedConfig, ctx: CheckContext) -> list[Finding]:
    """All findings for one parsed config."""
    return [finding for rule in RULES for finding in rule(pc, ctx)]


def check_paths(paths: Iterable[Path], target: Target | None = None) -> list[Finding]:
    """Findings for every config under ``paths`` (config files, model folders or repositories)."""
    target = target if target is not None else Target()
    indexes: dict[Path, ModelIndex] = {}
    seen: set[Path] = set()
    findings: list[Finding] = []
    for config_path in _configs(paths, findings):
        if config_path.resolve() in seen:
            continue
        seen.add(config_path.resolve())
        # A model folder's parent is its repository: that is where Triton finds ensemble steps.
        repository = config_path.parent.parent.resolve()
        index = indexes.setdefault(repository, ModelIndex(repository))
        loaded = index.load(config_path)
        if isinstance(loaded, Finding):
            findings.append(loaded)
        else:
            findings.extend(check_parsed(loaded, CheckContext(target, index)))
    return sorted(findings, key=lambda f: (str(f.path), f.line, f.column))


def _configs(paths: Iterable[Path], findings: list[Finding]) -> Iterator[Path]:
    for path in paths:
        found = config_paths(path)
        if isinstance(found, Finding):
            findings.append(found)
        else:
            yield from found
