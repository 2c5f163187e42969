"""Judge a canary against the champion over one window: statistics first, hard floors underneath.

Like Spinnaker's Kayenta rather than only Flagger's fixed thresholds: each metric gets a one-sided
test (Fisher's exact test on error counts, Mann-Whitney U on latencies, the latter on histogram
buckets as ordinal data with ties), with a minimum sample, so a small real regression is caught
once there is enough traffic and noise does not trip a rollback. A latency regression must also be
large enough to matter (``min_latency_effect``). Hard floors (error-rate increase, p95 ratio) abort
at once whatever the statistics say. Every verdict carries its p-values and effect sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import Field

from core.params import ParamsGroup
from serving.telemetry import VersionStats, quantile


class RolloutParams(ParamsGroup):
    """The ``rollout`` group of params.yaml."""

    steps: list[int] = Field(min_length=1)
    interval_s: float = Field(gt=0)
    min_requests: int = Field(ge=1)
    alpha: float = Field(gt=0, lt=1)
    max_error_rate_increase: float = Field(ge=0, le=1)
    max_p95_ratio: float = Field(gt=1)
    min_latency_effect: float = Field(ge=1)
    max_failed_checks: int = Field(ge=1)
    # The least canary traffic in a window before a hard floor can abort (a floor needs evidence too).
    floor_min_requests: int = Field(ge=1)


class Decision(StrEnum):
    HEALTHY = "healthy"  # enough traffic and nothing worse: may step up
    WAIT = "wait"  # not enough traffic in the window to judge
    FAIL = "fail"  # a statistically significant regression: counts towards max_failed_checks
    ABORT = "abort"  # a hard floor breached: roll back now


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reasons: list[str]
    figures: dict[str, float] = field(default_factory=dict)
    # The hard floors breached ("errors", "p95"), for a caller that treats them differently.
    floors: tuple[str, ...] = ()

    def summary(self) -> str:
        return f"{self.decision}: " + ("; ".join(self.reasons) if self.reasons else "no regression")


def fisher_greater(canary_errors: int, canary_ok: int, champion_errors: int, champion_ok: int) -> float:
    """One-sided p-value that the canary's error proportion exceeds the champion's."""
    from scipy.stats import fisher_exact

    table = [[canary_errors, canary_ok], [champion_errors, champion_ok]]
    return float(fisher_exact(table, alternative="greater").pvalue)


def mann_whitney_greater(canary: VersionStats, champion: VersionStats) -> float:
    """One-sided p-value that canary latencies are stochastically greater (buckets as tied ranks)."""
    from scipy.stats import mannwhitneyu

    order = {le: index for index, le in enumerate(sorted(set(canary.buckets) | set(champion.buckets)))}

    def sample(stats: VersionStats) -> list[int]:
        return [order[le] for le, count in stats.bucket_counts() for _ in range(round(count))]

    x, y = sample(canary), sample(champion)
    if not x or not y or len(set(x) | set(y)) < 2:
        return 1.0
    return float(mannwhitneyu(x, y, alternative="greater", method="asymptotic").pvalue)


def judge(champion: VersionStats, canary: VersionStats, params: RolloutParams, *, floors: bool = True) -> Verdict:
    """The verdict on one window of traffic; ``floors=False`` leaves the hard floors to the caller."""
    figures = _figures(champion, canary)
    reasons: list[str] = []
    breached: list[str] = []
    canary_n, champion_n = int(canary.requests), int(champion.requests)
    if floors and canary_n >= params.floor_min_requests:
        increase = figures["canary_error_rate"] - figures["champion_error_rate"]
        if increase > params.max_error_rate_increase:
            breached.append("errors")
            reasons.append(
                f"canary error rate {figures['canary_error_rate']:.1%} is {increase:.1%} above the champion's "
                f"{figures['champion_error_rate']:.1%} (floor: rollout.max_error_rate_increase "
                f"{params.max_error_rate_increase:.1%})"
            )
        ratio = figures.get("p95_ratio")
        # A p95 needs more samples than an error rate: judge it only once the window is full enough.
        if ratio is not None and ratio > params.max_p95_ratio and canary_n >= params.min_requests:
            breached.append("p95")
            reasons.append(
                f"canary p95 {figures['canary_p95_ms']:.0f} ms is {ratio:.2f}x the champion's "
                f"{figures['champion_p95_ms']:.0f} ms (floor: rollout.max_p95_ratio {params.max_p95_ratio})"
            )
        if reasons:
            return Verdict(Decision.ABORT, reasons, figures, tuple(breached))
    if canary_n < params.min_requests or champion_n < params.min_requests:
        return Verdict(
            Decision.WAIT,
            [f"{canary_n} canary and {champion_n} champion requests; rollout.min_requests is {params.min_requests}"],
            figures,
        )
    errors_p = fisher_greater(
        int(canary.errors), canary_n - int(canary.errors), int(champion.errors), champion_n - int(champion.errors)
    )
    latency_p = mann_whitney_greater(canary, champion)
    figures |= {"errors_p_value": errors_p, "latency_p_value": latency_p}
    if errors_p < params.alpha:
        reasons.append(
            f"more errors than the champion ({figures['canary_error_rate']:.1%} vs "
            f"{figures['champion_error_rate']:.1%}, Fisher p={errors_p:.2g} < alpha {params.alpha})"
        )
    effect = figures.get("p50_ratio")
    if latency_p < params.alpha and effect is not None and effect >= params.min_latency_effect:
        reasons.append(
            f"slower than the champion (p50 {figures['canary_p50_ms']:.0f} vs {figures['champion_p50_ms']:.0f} ms, "
            f"x{effect:.2f} >= rollout.min_latency_effect {params.min_latency_effect}; "
            f"Mann-Whitney p={latency_p:.2g} < alpha {params.alpha})"
        )
    return Verdict(Decision.FAIL if reasons else Decision.HEALTHY, reasons, figures)


def _figures(champion: VersionStats, canary: VersionStats) -> dict[str, float]:
    figures: dict[str, float] = {
        "canary_requests": canary.requests,
        "champion_requests": champion.requests,
        "canary_error_rate": canary.errors / canary.requests if canary.requests else 0.0,
        "champion_error_rate": champion.errors / champion.requests if champion.requests else 0.0,
    }
    for name, stats in (("canary", canary), ("champion", champion)):
        for label, q in (("p50", 0.5), ("p95", 0.95)):
            value = quantile(stats, q)
            if value is not None:
                figures[f"{name}_{label}_ms"] = round(value * 1000, 2)
    for label in ("p50", "p95"):
        canary_ms, champion_ms = figures.get(f"canary_{label}_ms"), figures.get(f"champion_{label}_ms")
        if canary_ms is not None and champion_ms:
            figures[f"{label}_ratio"] = round(canary_ms / champion_ms, 3)
    return figures
