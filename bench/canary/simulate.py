"""Simulated rollouts judged by the controller's own tick logic (``serving.rollout.machine``) on a virtual clock.

Each batch is many independent rollouts of one canary class at one traffic rate (rows mix the
latency settings and base error rates). Every virtual second: requests arrive (Poisson) and split by
the canary weight; each fails with its version's error rate (a failed canary attempt is retried on
the champion, as the gateway does, and that retry is not judged); successes land in the contract's
log-spaced histograms for end-to-end latency, time to first token and time per output token; golden
probes are answered from each version's fixed right/wrong table; then ``Machine.tick`` decides and the batch applies the
action (start, step, promote, roll back), exactly as the controller applies it to the registry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from core.rollout_policy import RolloutPolicy
from serving.rollout.analysis import Evidence, Probes, Side, select_rows
from serving.rollout.machine import Action, Machine
from serving.telemetry import HISTOGRAMS, LATENCY_BUCKETS, N_BUCKETS

Array = NDArray[np.float64]

#: The golden set the probes draw from: its size, and how many the champion answers wrong (98.7%).
GOLDEN_SIZE = 300
CHAMPION_WRONG = 4
#: Tokens per answer: time per output token = (latency - time to first token) / (tokens - 1).
TOKENS = 8
SIGMA = 0.35  # log-space spread of a request's latency around the median
_LOG_BOUNDS = np.log(np.array(LATENCY_BUCKETS))


class Canary(BaseModel):
    """How a canary class differs from its champion."""

    model_config = ConfigDict(frozen=True)

    name: str
    error_increase: float = 0.0  # absolute points added to the error rate
    slowdown: float = 1.0  # every request's latencies times this
    tail_share: float = 0.0  # this share of requests...
    tail_slowdown: float = 1.0  # ...this much slower
    extra_wrong: int = 0  # golden questions the canary answers wrong that the champion gets right

    @property
    def bad(self) -> bool:
        """Whether the right verdict is a rollback."""
        return self.error_increase > 0 or self.slowdown > 1 or self.tail_share > 0 or self.extra_wrong > 0


CLASSES: tuple[Canary, ...] = (
    Canary(name="identical"),
    Canary(name="errors +1 pt", error_increase=0.01),
    Canary(name="errors +2 pts", error_increase=0.02),
    Canary(name="errors +5 pts", error_increase=0.05),
    Canary(name="latency x1.2", slowdown=1.2),
    Canary(name="latency x1.3", slowdown=1.3),
    Canary(name="latency x1.5", slowdown=1.5),
    Canary(name="tail: 10% x3", tail_share=0.10, tail_slowdown=3.0),
    Canary(name="answers -5 pts", extra_wrong=15),
    Canary(name="answers -10 pts", extra_wrong=30),
)


@dataclass
class Settings:
    """Per-row traffic settings (arrays of one value per rollout)."""

    rate: Array  # requests per second, all versions
    error_rate: Array  # the champion's
    median_s: Array  # the champion's median end-to-end latency
    heavy_tail: NDArray[np.bool_]


@dataclass
class Outcome:
    """Per row: 1 promoted, -1 rolled back, 0 undecided by the horizon; when; the weight at a rollback."""

    decision: NDArray[np.int64]
    seconds: Array
    weight: Array
    reason: list[str]
    # Seconds from the start to reaching each step (NaN: never reached), rows x steps.
    reached: Array


def draw_settings(rng: np.random.Generator, rows: int, rate: float, error_rates: tuple[float, ...],
                  medians_s: tuple[float, ...]) -> Settings:  # fmt: skip
    return Settings(
        rate=np.full(rows, float(rate)),
        error_rate=rng.choice(np.array(error_rates), rows),
        median_s=rng.choice(np.array(medians_s), rows),
        heavy_tail=rng.random(rows) < 0.5,
    )


def _sample_log_latency(rng: np.random.Generator, log_median: Array, heavy: NDArray[np.bool_]) -> Array:
    """log seconds of end-to-end latency; heavy tails: 5% of requests from a slower, wider distribution."""
    z = rng.standard_normal(len(log_median))
    tail = heavy & (rng.random(len(log_median)) < 0.05)
    return np.where(tail, log_median + np.log(2.5) + 0.9 * z, log_median + SIGMA * z)


class Traffic:
    """Generates one virtual second of live traffic per row and adds it to the evidence."""

    def __init__(self, rng: np.random.Generator, settings: Settings, canary: Canary) -> None:
        self.rng = rng
        self.settings = settings
        self.canary = canary

    def second(self, weight: Array, evidence: Evidence) -> None:
        rng, s, c = self.rng, self.settings, self.canary
        share = weight / 100.0
        n_canary = rng.poisson(s.rate * share).astype(np.float64)
        n_champion = rng.poisson(s.rate * (1 - share)).astype(np.float64)
        # A failed canary attempt is retried on the champion, which the gateway does not judge.
        canary_errors = rng.binomial(n_canary.astype(np.int64), np.minimum(s.error_rate + c.error_increase, 1.0))
        champion_errors = rng.binomial(n_champion.astype(np.int64), s.error_rate)
        for side, n, errors, is_canary in (
            (evidence.canary, n_canary, canary_errors, True),
            (evidence.champion, n_champion, champion_errors, False),
        ):
            side.requests += n
            side.errors += errors
            self._latencies(side, (n - errors).astype(np.int64), is_canary)

    def _latencies(self, side: Side, ok: NDArray[np.int64], is_canary: bool) -> None:
        total = int(ok.sum())
        if total == 0:
            return
        rng, s, c = self.rng, self.settings, self.canary
        rows = np.repeat(np.arange(len(ok)), ok)
        log_e2e = _sample_log_latency(rng, np.log(s.median_s[rows]), s.heavy_tail[rows])
        if is_canary:
            log_e2e = log_e2e + np.log(c.slowdown)
            if c.tail_share:
                log_e2e = log_e2e + np.where(rng.random(total) < c.tail_share, np.log(c.tail_slowdown), 0.0)
        e2e = np.exp(log_e2e)
        # Prefill: about a quarter of the time, varying less than the whole answer does.
        ttft = np.minimum(e2e * 0.25 * np.exp(0.2 * rng.standard_normal(total)), 0.9 * e2e)
        tpot = (e2e - ttft) / (TOKENS - 1)
        for name, values in (("latency", e2e), ("ttft", ttft), ("tpot", tpot)):
            index = np.searchsorted(_LOG_BOUNDS, np.log(values), side="left")
            flat = np.bincount(rows * N_BUCKETS + index, minlength=len(ok) * N_BUCKETS)
            side.histograms[name] += flat.reshape(len(ok), N_BUCKETS)


class GoldenProbes:
    """Each row asks the golden questions in its own random order, one pair per 1/probe_rps seconds."""

    def __init__(self, rng: np.random.Generator, rows: int, canary: Canary, probe_rps: float) -> None:
        self.probe_rps = probe_rps
        order = np.argsort(rng.random((rows, GOLDEN_SIZE)), axis=1)
        champion_right = np.ones((rows, GOLDEN_SIZE), dtype=bool)
        champion_right[:, :CHAMPION_WRONG] = False
        canary_right = champion_right.copy()
        canary_right[:, CHAMPION_WRONG : CHAMPION_WRONG + canary.extra_wrong] = False
        asked_champion = np.take_along_axis(champion_right, order, axis=1)
        asked_canary = np.take_along_axis(canary_right, order, axis=1)
        zero = np.zeros((rows, 1))
        self.cum_worse = np.hstack([zero, np.cumsum(asked_champion & ~asked_canary, axis=1)])
        self.cum_better = np.hstack([zero, np.cumsum(asked_canary & ~asked_champion, axis=1)])
        self.cum_canary = np.hstack([zero, np.cumsum(asked_canary, axis=1)])
        self.cum_champion = np.hstack([zero, np.cumsum(asked_champion, axis=1)])

    def update(self, probes: Probes, seconds_since_start: Array) -> None:
        asked = np.minimum(np.floor(self.probe_rps * np.maximum(seconds_since_start, 0.0)), GOLDEN_SIZE).astype(int)
        rows = np.arange(len(asked))
        probes.asked = asked.astype(np.float64)
        probes.worse = self.cum_worse[rows, asked]
        probes.better = self.cum_better[rows, asked]
        probes.canary_right = self.cum_canary[rows, asked]
        probes.champion_right = self.cum_champion[rows, asked]

    def select(self, keep: NDArray[np.bool_]) -> None:
        for name in ("cum_worse", "cum_better", "cum_canary", "cum_champion"):
            setattr(self, name, getattr(self, name)[keep])


def run_batch(canary: Canary, settings: Settings, policy: RolloutPolicy, *, seed: int, horizon_s: float) -> Outcome:
    """Every row's rollout to its verdict (or the horizon), one virtual second per tick."""
    rows = len(settings.rate)
    rng = np.random.default_rng(seed)
    machine = Machine(policy, rows)
    evidence = Evidence(Side.empty(rows), Side.empty(rows), Probes.empty(rows, judged=policy.probe_rps > 0))
    traffic = Traffic(rng, settings, canary)
    probes = GoldenProbes(rng, rows, canary, policy.probe_rps)
    decision = np.zeros(rows, dtype=np.int64)
    seconds = np.full(rows, np.nan)
    at_weight = np.full(rows, np.nan)
    reasons = [""] * rows
    reached = np.full((rows, len(policy.steps)), np.nan)
    step_of = {w: i for i, w in enumerate(policy.steps)}
    active = np.arange(rows)  # original row numbers of the rows still deciding
    started_at = np.full(rows, np.nan)
    now = 0.0
    while len(active) and now <= horizon_s:
        actions, assessment = machine.tick(now, evidence)
        start = actions == Action.START
        started_at[start] = now
        moving = start | (actions == Action.STEP)
        # Applied as the controller applies them: the registry's new weight, taken by ``sync``.
        machine.sync(now, np.where(moving, machine.next_weight(), machine.weight), evidence.canary.requests)
        for local in np.flatnonzero(moving):
            since = 0.0 if start[local] else started_at[local]
            reached[active[local], step_of[int(machine.weight[local])]] = now - since
        done = (actions == Action.PROMOTE) | (actions == Action.ROLLBACK)
        if done.any():
            for local in np.flatnonzero(done):
                row = active[local]
                rolled_back = actions[local] == Action.ROLLBACK
                decision[row] = -1 if rolled_back else 1
                seconds[row] = now - started_at[local]
                at_weight[row] = machine.weight[local]
                if rolled_back:
                    harmed = [m for m, flags in assessment.harm.items() if flags[local] and assessment.judged[m][local]]
                    reasons[row] = ",".join(harmed)
            keep = ~done
            active = active[keep]
            evidence = select_rows(evidence, keep)
            probes.select(keep)
            traffic.settings = Settings(*(getattr(traffic.settings, f)[keep] for f in
                                          ("rate", "error_rate", "median_s", "heavy_tail")))  # fmt: skip
            machine.select(keep)
            started_at = started_at[keep]
        now += 1.0
        if len(active):
            traffic.second(machine.weight, evidence)
            probes.update(evidence.probes, now - started_at)
    return Outcome(decision, seconds, at_weight, reasons, reached)


__all__ = ["CLASSES", "HISTOGRAMS", "Canary", "Outcome", "Settings", "draw_settings", "run_batch"]
