"""The rollout's tick logic: from the evidence so far, start, step, promote, roll back, or wait.

One row per rollout. The controller keeps one row in step with the registry's weight and carries
out the action it returns; ``make canary-eval`` runs thousands of rows on a virtual clock and applies
the actions itself. Both call ``tick`` with the same policy, so the figures it prints are the
controller's own.

Each tick:
1. a canary below the first step is started at it; the latencies of its first ``warmup_s`` are not
   judged (a freshly loaded model's first requests are slow for reasons that are not the build's),
   its errors and answers are, from the first request;
2. harm on any judged metric rolls it back, at any step, at once (the bounds are always valid, so
   looking every tick costs no false rollbacks);
3. otherwise, once it has been at this weight ``min_step_s`` and served ``min_step_requests`` there,
   and every judged metric is shown within the margins of the weight it would move to (the final
   margins, tails included, for the last step and for promotion), it steps up, or after the last
   step is promoted;
4. otherwise it waits (and says what for).
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from core.rollout_policy import RolloutPolicy
from serving.rollout.analysis import (
    Assessment,
    Evidence,
    Probes,
    Sequential,
    Side,
    assess,
    latencies_since,
    select_rows,
    take_rows,
)
from serving.rollout.stats import Array, Mask


class Action(IntEnum):
    WAIT = 0
    START = 1
    STEP = 2
    PROMOTE = 3
    ROLLBACK = 4


class Machine:
    """The per-row state the tick logic needs: the weight, and when and where the current step began."""

    def __init__(self, policy: RolloutPolicy, rows: int, now: float = 0.0) -> None:
        self.policy = policy
        self.steps = np.array(policy.steps, dtype=np.float64)
        self.weight = np.zeros(rows)
        self.step_started = np.full(rows, now)
        self.step_requests = np.zeros(rows)  # canary requests when the step began
        self.started_at = np.full(rows, np.nan)  # when the canary first got traffic (NaN: not yet)
        # Latency histograms up to the end of the warm-up, subtracted from what is judged.
        self.baseline = Evidence(Side.empty(rows), Side.empty(rows), Probes.empty(rows))
        self.sequential = Sequential(rows)

    def sync(self, now: float, weight: Array, canary_requests: Array) -> None:
        """Take the weights as they are now (someone may have moved them); a changed weight starts a step."""
        changed = weight != self.weight
        first = self.steps[0]
        self.started_at = np.where((self.weight < first) & (weight >= first), now, self.started_at)
        self.weight = np.where(changed, weight, self.weight)
        self.step_started = np.where(changed, now, self.step_started)
        self.step_requests = np.where(changed, canary_requests, self.step_requests)

    def tick(self, now: float, evidence: Evidence) -> tuple[Array, Assessment]:
        """The action for every row (``Action`` values) and the assessment it rests on."""
        policy = self.policy
        warming = ~(now - self.started_at >= policy.warmup_s)  # NaN (not started) counts as warming
        # Latencies of the warm-up are not judged; errors and answers are, from the first request.
        take_rows(self.baseline, evidence, warming)
        judged = latencies_since(evidence, self.baseline)
        self.sequential.update(judged, policy)
        # A canary gets more traffic only once shown fit for that much: judged at the margins of the
        # weight it would move to (the final margins for the last step and for promotion).
        target = self.next_weight()
        assessment = assess(judged, policy, target, self.sequential.evalues())
        started = self.weight >= self.steps[0]
        dwelt = (
            ~warming
            & (now - self.step_started >= policy.min_step_s)
            & (evidence.canary.requests - self.step_requests >= policy.min_step_requests)
        )
        last = self.weight >= self.steps[-1]
        healthy = assessment.all_healthy(target >= self.steps[-1])
        actions = np.where(
            ~started,
            Action.START,
            np.where(
                assessment.any_harm(),
                Action.ROLLBACK,
                np.where(dwelt & healthy, np.where(last, Action.PROMOTE, Action.STEP), Action.WAIT),
            ),
        )
        return actions.astype(np.int64), assessment

    def select(self, keep: Mask) -> None:
        """Keep only these rows (a batch drops the rollouts it has decided)."""
        self.weight, self.step_started = self.weight[keep], self.step_started[keep]
        self.step_requests, self.started_at = self.step_requests[keep], self.started_at[keep]
        self.baseline = select_rows(self.baseline, keep)
        self.sequential.select(keep)

    def next_weight(self) -> Array:
        """The weight a START or STEP moves each row to: the first step above its weight."""
        above = self.steps[None, :] > self.weight[:, None]
        index = np.where(above.any(axis=1), above.argmax(axis=1), len(self.steps) - 1)
        return np.asarray(self.steps[index], dtype=np.float64)
