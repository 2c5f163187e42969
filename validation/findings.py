"""The typed result every validation check returns: one finding per broken or risky setting."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


class Severity(enum.StrEnum):
    """``error`` fails the check (exit 1); ``warning`` is legal but risky and only informs."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem at one place. ``line`` and ``column`` are 1-based; 0 means the whole file."""

    path: Path
    line: int
    column: int
    severity: Severity
    rule: str
    message: str

    def format(self) -> str:
        """``path:line: severity: message [rule]``, the compiler-style form editors link to."""
        where = f"{self.path}:{self.line}" if self.line else f"{self.path}"
        return f"{where}: {self.severity}: {self.message} [{self.rule}]"


def has_errors(findings: Iterable[Finding]) -> bool:
    return any(f.severity is Severity.ERROR for f in findings)


def exit_code(findings: Iterable[Finding]) -> int:
    """The CLI contract: 1 when any finding is an error, else 0 (warnings pass)."""
    return 1 if has_errors(findings) else 0
