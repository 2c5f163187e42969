"""Figures in the words a person reads, one wording wherever they appear (stage logs, the gate's
report, the registry's descriptions and status, the demo summary).

Light on purpose: the gateway image ships ``core/`` without the evaluation stack, and the registry
code in that image uses these words too.
"""

from __future__ import annotations


def describe_drop(drop: float) -> str:
    """A change in accuracy in words: ``0.0033`` is "0.3 points lower", ``-0.01`` "1.0 point higher"."""
    points = abs(drop) * 100
    if round(points, 1) == 0:
        return "no change"
    unit = "point" if round(points, 1) == 1 else "points"
    return f"{points:.1f} {unit} {'lower' if drop > 0 else 'higher'}"


def versus_base(drop: float) -> str:
    """The change against the base model: "0.3 points lower than the base model"."""
    words = describe_drop(drop)
    return "the same as the base model" if words == "no change" else f"{words} than the base model"


def accuracy_words(accuracy: float, drop: float | None) -> str:
    """``accuracy 98.3% (0.3 points lower than the base model)``; the change left out when unknown."""
    change = f" ({versus_base(drop)})" if drop is not None else ""
    return f"accuracy {accuracy:.1%}{change}"
