"""``check-config``: every rule over every config a path names; findings sorted by file and line."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from validation.context import CheckContext, Target
from validation.findings import Finding
from validation.pbtxt import ParsedConfig
from validation.repo import ModelIndex, config_paths
from validation.rules_ensemble import check_ensemble
from validation.rules_ensemble_steps import check_ensemble_steps
from validation.rules_instances import check_instances
from validation.rules_io import check_io
from validation.rules_model import check_model
from validation.rules_scheduling import check_scheduling
from validation.rules_state import check_state
from validation.rules_warmup import check_warmup

Rule = Callable[[ParsedConfig, CheckContext], Iterable[Finding]]
RULES: Sequence[Rule] = (
    check_model, check_instances, check_io, check_warmup, check_scheduling, check_state, check_ensemble,
    check_ensemble_steps,
)  # fmt: skip


def check_parsed(pc: ParsedConfig, ctx: CheckContext) -> list[Finding]:
    """All findings for one parsed config."""
    return [finding for rule in RULES for finding in rule(pc, ctx)]


def check_paths(paths: Iterable[Path], target: Target | None = None) -> list[Finding]:
    """Findings for every config under ``paths`` (config files, model folders or repositories)."""
    run = _Run(target if target is not None else Target())
    seen: set[Path] = set()
    findings: list[Finding] = []
    for config_path in _configs(paths, findings):
        key = config_path.resolve()
        if key in seen:
            continue
        seen.add(key)
        loaded = run.load(config_path)
        findings.extend([loaded] if isinstance(loaded, Finding) else run.findings(loaded))
    return sorted(findings, key=lambda f: (str(f.path), f.line, f.column))


class _Run:
    """One ``check_paths`` call: a context per repository, and each config's findings computed once.

    Ensembles ask for their step models' findings, so a model may be checked before its turn comes.
    """

    def __init__(self, target: Target) -> None:
        self._target = target
        self._indexes: dict[Path, ModelIndex] = {}
        self._contexts: dict[Path, CheckContext] = {}
        self._done: dict[Path, list[Finding]] = {}
        self._busy: set[Path] = set()

    def load(self, config_path: Path) -> ParsedConfig | Finding:
        return self._index(config_path).load(config_path)

    def findings(self, pc: ParsedConfig) -> list[Finding]:
        key = pc.path.resolve()
        if key in self._busy:
            return []  # an ensemble cycle leads back here; the cycle rule reports it
        if key not in self._done:
            self._busy.add(key)
            try:
                self._done[key] = check_parsed(pc, self._context(pc.path))
            finally:
                self._busy.discard(key)
        return self._done[key]

    def _index(self, config_path: Path) -> ModelIndex:
        # A model folder's parent is its repository: that is where Triton finds ensemble steps.
        # The index keeps the repository as first written, so step models print like the rest.
        repository = config_path.parent.parent
        key = repository.resolve()
        if key not in self._indexes:
            self._indexes[key] = ModelIndex(repository)
        return self._indexes[key]

    def _context(self, config_path: Path) -> CheckContext:
        key = config_path.parent.parent.resolve()
        if key not in self._contexts:
            self._contexts[key] = CheckContext(self._target, self._index(config_path), self.findings)
        return self._contexts[key]


def _configs(paths: Iterable[Path], findings: list[Finding]) -> Iterator[Path]:
    for path in paths:
        found = config_paths(path)
        if isinstance(found, Finding):
            findings.append(found)
        else:
            yield from found
