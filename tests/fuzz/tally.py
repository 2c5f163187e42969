"""Counts of what each fuzzer sent and got back, printed at the end of the run (``conftest``)."""

from __future__ import annotations

import time
from collections import Counter
from typing import ClassVar


class Tally:
    """One fuzzer's counts by outcome; ``Tally.named`` registers it for the end-of-run summary."""

    all: ClassVar[dict[str, Tally]] = {}

    def __init__(self, name: str) -> None:
        self.name = name
        self.counts: Counter[str] = Counter()
        self.started = time.monotonic()
        self.seconds = 0.0

    @classmethod
    def named(cls, name: str) -> Tally:
        tally = cls.all[name] = cls(name)
        return tally

    def add(self, outcome: str, count: int = 1) -> None:
        self.counts[outcome] += count
        self.seconds = time.monotonic() - self.started

    def line(self) -> str:
        outcomes = ", ".join(f"{key}: {value}" for key, value in sorted(self.counts.items()))
        return f"{self.name} ({self.seconds:.0f} s): {outcomes}"
