"""The rule for canary weight steps, shared by the rollout policy and the registry's step action."""

from __future__ import annotations

import itertools
from collections.abc import Sequence


def check_steps(steps: Sequence[int]) -> list[int]:
    """Canary steps are percents from 1 to 100, strictly increasing; ValueError says which rule broke."""
    if not steps:
        raise ValueError("give at least one canary weight step")
    if any(isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 100 for s in steps):
        raise ValueError(f"steps {list(steps)}: each must be a whole percent from 1 to 100")
    if any(a >= b for a, b in itertools.pairwise(steps)):
        raise ValueError(f"steps {list(steps)} must be strictly increasing")
    return list(steps)
