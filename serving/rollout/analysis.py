"""Judge a canary against its champion on everything each served since the canary started.

Per metric, two one-sided questions with always-valid bounds (``serving.rollout.stats``), so the
answer stays right however often it is asked (the controller asks every tick):

- **harm**: is the canary worse, with confidence ``1 - alpha``? Then it is rolled back at once.
- **health**: is the canary shown *not worse* than the step's margin, with confidence
  ``1 - ni_alpha``? Only then may it step up (non-inferiority: silence is not evidence).

The metrics:

- ``errors``: error rate (failed live attempts / live attempts), canary minus champion.
- ``<latency>_p50`` and ``<latency>_p95`` for end-to-end latency, time to first token and time per
  output token: a quantile comparison read as a comparison of proportions. The canary is slower than
  ``r`` times the champion at quantile q exactly when more than ``1 - q`` of its requests take longer
  than ``r`` times the champion's q-quantile. Both shares come from the log-spaced histograms (a
  threshold between bounds is interpolated in log space), and the champion's share is bounded too,
  since its quantile is an estimate.
- ``quality``: golden-set probes asked of both versions; discordant pairs (one right, one wrong)
  decide, as in McNemar's test, sequentially (``stats.discordance_evalue``); health is the upper bound
  of (canary-only wrong - champion-only wrong) / probes below the margin.

Everything is arrays with one row per rollout: the controller judges one row, ``make canary-eval``
thousands of simulated rollouts through this same code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from core.rollout_policy import RolloutPolicy
from serving.rollout.stats import (
    RATIOS,
    Array,
    Mask,
    bernoulli_bound,
    conditional_log_ratios,
    discordance_evalue,
    mixture_evalue,
)
from serving.telemetry import BUCKET_GROWTH, HISTOGRAMS, LATENCY_BUCKETS, N_BUCKETS

QUANTILES: tuple[tuple[str, float], ...] = (("p50", 0.5), ("p95", 0.95))
#: Every judged metric, in the order reasons are given.
METRICS: tuple[str, ...] = (
    "errors",
    *(f"{name}_{label}" for name in HISTOGRAMS for label, _ in QUANTILES),
    "quality",
)
LABELS = {
    "errors": "error rate",
    "latency": "latency",
    "ttft": "time to first token",
    "tpot": "time per output token",
    "quality": "answers to golden probes",
}
_LOG_GROWTH = float(np.log(BUCKET_GROWTH))
_BOUNDS = np.array(LATENCY_BUCKETS)
_LOWER_EDGES = np.concatenate([[LATENCY_BUCKETS[0] / BUCKET_GROWTH], _BOUNDS])


def _zeros(rows: int) -> Array:
    return np.zeros(rows)


@dataclass
class Side:
    """One version's live traffic since the canary started: counts per row, histograms (rows x buckets)."""

    requests: Array
    errors: Array
    histograms: dict[str, Array]

    @classmethod
    def empty(cls, rows: int) -> Side:
        return cls(_zeros(rows), _zeros(rows), {name: np.zeros((rows, N_BUCKETS)) for name in HISTOGRAMS})


@dataclass
class Probes:
    """Golden questions asked of both versions since the canary started, and how the answers compared."""

    asked: Array
    worse: Array  # the champion right, the canary wrong
    better: Array  # the canary right, the champion wrong
    canary_right: Array
    champion_right: Array
    judged: Mask  # probing is on (a golden set and probe_rps > 0)

    @classmethod
    def empty(cls, rows: int, judged: bool = False) -> Probes:
        return cls(_zeros(rows), _zeros(rows), _zeros(rows), _zeros(rows), _zeros(rows), np.full(rows, judged))


@dataclass
class Evidence:
    canary: Side
    champion: Side
    probes: Probes

    @property
    def rows(self) -> int:
        return len(self.canary.requests)


@dataclass
class Assessment:
    """Per metric: judged at all, harmful, shown healthy at this weight's margins; figures for people."""

    judged: dict[str, Mask] = field(default_factory=dict)
    harm: dict[str, Mask] = field(default_factory=dict)
    healthy: dict[str, Mask] = field(default_factory=dict)
    figures: dict[str, Array] = field(default_factory=dict)

    def any_harm(self) -> Mask:
        out = np.zeros(len(next(iter(self.harm.values()))), dtype=bool)
        for metric in METRICS:
            out |= self.harm[metric] & self.judged[metric]
        return out

    def all_healthy(self, tails: Mask) -> Mask:
        """Every judged metric shown within its margin; the p95s only where ``tails`` (the last step).

        A p95 needs over a hundred samples before any bound can place it, so a low step would wait
        minutes for it; a tail regression is still caught at any step by its harm test.
        """
        out = np.ones(len(tails), dtype=bool)
        for metric in METRICS:
            needed = self.judged[metric] & tails if metric.endswith("_p95") else self.judged[metric]
            out &= self.healthy[metric] | ~needed
        return out

    def row_figures(self, row: int) -> dict[str, float]:
        return {key: round(float(values[row]), 6) for key, values in self.figures.items() if np.isfinite(values[row])}


class Sequential:
    """The conditional tests' running state: per metric, log likelihood ratios summed over looks.

    Each look compares only what both versions served since the previous look (the same seconds, so
    load, time of day and retries on the champion affect both alike), with the threshold for a
    latency quantile fixed from the champion's earlier traffic before the look's samples are seen.
    This is the sharper harm test while both versions get traffic; the bounds on the totals
    (``assess``) still judge at 100%, where the champion serves nothing new.
    """

    def __init__(self, rows: int) -> None:
        self.log_ratios = {m: np.zeros((rows, len(RATIOS))) for m in METRICS if m != "quality"}
        self.previous = Evidence(Side.empty(rows), Side.empty(rows), Probes.empty(rows))

    def update(self, evidence: Evidence, policy: RolloutPolicy) -> None:
        now, before = evidence, self.previous
        self.log_ratios["errors"] += conditional_log_ratios(
            now.canary.errors - before.canary.errors,
            now.canary.requests - before.canary.requests,
            now.champion.errors - before.champion.errors,
            now.champion.requests - before.champion.requests,
        )
        shift = np.log(policy.latency_tolerance) / _LOG_GROWTH
        for name in HISTOGRAMS:
            earlier = before.champion.histograms[name]
            earlier_cum = np.cumsum(earlier, axis=1)
            known = earlier_cum[:, -1] >= policy.min_latency_samples
            canary = now.canary.histograms[name] - before.canary.histograms[name]
            champion = now.champion.histograms[name] - earlier
            c_cum, m_cum = np.cumsum(canary, axis=1), np.cumsum(champion, axis=1)
            c_n, m_n = c_cum[:, -1], m_cum[:, -1]
            for label, q in QUANTILES:
                at = _position(earlier, earlier_cum, q)
                canary_over = c_n - _below(canary, c_cum, at + shift)
                champion_over = m_n - _below(champion, m_cum, at)
                step = conditional_log_ratios(canary_over, c_n, champion_over, m_n)
                self.log_ratios[f"{name}_{label}"] += np.where(known[:, None], step, 0.0)
        self.previous = Evidence(
            _copy_side(now.canary), _copy_side(now.champion), Probes.empty(len(now.canary.requests))
        )

    def evalues(self) -> dict[str, Array]:
        return {metric: mixture_evalue(values) for metric, values in self.log_ratios.items()}

    def select(self, keep: Mask) -> None:
        self.log_ratios = {m: v[keep] for m, v in self.log_ratios.items()}
        self.previous = select_rows(self.previous, keep)


def latencies_since(now: Evidence, baseline: Evidence) -> Evidence:
    """``now`` with the latency histograms counted from ``baseline`` on (requests, errors and probes whole)."""

    def side(a: Side, b: Side) -> Side:
        return Side(a.requests, a.errors, {k: v - b.histograms[k] for k, v in a.histograms.items()})

    return Evidence(side(now.canary, baseline.canary), side(now.champion, baseline.champion), now.probes)


def take_rows(target: Evidence, source: Evidence, rows: Mask) -> None:
    """Copy ``source``'s latency histograms into ``target`` on ``rows`` (in place)."""
    for mine, theirs in ((target.canary, source.canary), (target.champion, source.champion)):
        for name, counts in mine.histograms.items():
            counts[rows] = theirs.histograms[name][rows]


def select_rows(evidence: Evidence, keep: Mask) -> Evidence:
    """Only the ``keep`` rows (a batch drops the rollouts it has decided)."""
    p = evidence.probes
    probes = Probes(
        p.asked[keep], p.worse[keep], p.better[keep], p.canary_right[keep], p.champion_right[keep], p.judged[keep]
    )
    return Evidence(_select_side(evidence.canary, keep), _select_side(evidence.champion, keep), probes)


def _copy_side(side: Side) -> Side:
    return Side(side.requests.copy(), side.errors.copy(), {k: v.copy() for k, v in side.histograms.items()})


def _select_side(side: Side, keep: Mask) -> Side:
    return Side(side.requests[keep], side.errors[keep], {k: v[keep] for k, v in side.histograms.items()})


def assess(
    evidence: Evidence, policy: RolloutPolicy, weight: Array, evalues: dict[str, Array] | None = None
) -> Assessment:
    """Judge every row at its current canary ``weight`` (percent) and the policy's margins.

    ``evalues``: the conditional tests' evidence per metric (``Sequential``); each also counts as harm
    once it reaches 1/alpha.
    """
    widening = (100.0 / np.maximum(weight, 1e-9)) ** policy.margin_widening
    out = Assessment()
    _errors(evidence, policy, widening, out)
    for name in HISTOGRAMS:
        _latency(name, evidence, policy, widening, out)
    _quality(evidence.probes, policy, widening, out)
    for metric, values in (evalues or {}).items():
        out.harm[metric] = out.harm[metric] | (values >= 1.0 / policy.alpha)
        out.figures[f"{metric}_evidence"] = values
    return out


def _errors(evidence: Evidence, policy: RolloutPolicy, widening: Array, out: Assessment) -> None:
    canary, champion = evidence.canary, evidence.champion
    c_low = bernoulli_bound(canary.errors, canary.requests, policy.alpha, lower=True)
    m_high = bernoulli_bound(champion.errors, champion.requests, policy.alpha, lower=False)
    ni_c_high = bernoulli_bound(canary.errors, canary.requests, policy.ni_alpha, lower=False)
    ni_m_low = bernoulli_bound(champion.errors, champion.requests, policy.ni_alpha, lower=True)
    margin = policy.error_margin * widening
    out.judged["errors"] = np.ones(len(canary.requests), dtype=bool)  # no requests shows nothing, so never healthy
    out.harm["errors"] = c_low > m_high
    out.healthy["errors"] = (ni_c_high - ni_m_low < margin) & (champion.requests > 0)
    out.figures |= {
        "canary_requests": canary.requests,
        "champion_requests": champion.requests,
        "canary_error_rate": _ratio(canary.errors, canary.requests),
        "champion_error_rate": _ratio(champion.errors, champion.requests),
        # What the canary is shown to add at most (health) and at least (harm), in error-rate points.
        "error_increase_upper": ni_c_high - ni_m_low,
        "error_increase_lower": c_low - m_high,
        "error_margin": margin,
    }


def _latency(name: str, evidence: Evidence, policy: RolloutPolicy, widening: Array, out: Assessment) -> None:
    canary, champion = evidence.canary.histograms[name], evidence.champion.histograms[name]
    c_cum, m_cum = np.cumsum(canary, axis=1), np.cumsum(champion, axis=1)
    c_n, m_n = c_cum[:, -1], m_cum[:, -1]
    judged = (m_n >= policy.min_latency_samples) | (c_n >= policy.min_latency_samples)
    tolerance_shift = np.log(policy.latency_tolerance) / _LOG_GROWTH
    for label, q in QUANTILES:
        metric = f"{name}_{label}"
        final = policy.tail_margin if label == "p95" else policy.latency_margin
        margin = np.exp(np.log(final) * widening)
        margin_shift = np.log(margin) / _LOG_GROWTH
        at = _position(champion, m_cum, q)
        champion_over = (1.0 - q) * m_n
        # Harm: more than the champion's share of canary requests is slower than tolerance x its quantile.
        canary_over_tolerance = c_n - _below(canary, c_cum, at + tolerance_shift)
        low = bernoulli_bound(canary_over_tolerance, c_n, policy.alpha, lower=True)
        m_high = bernoulli_bound(champion_over, m_n, policy.alpha, lower=False)
        # Health: fewer than the champion's share is slower than margin x its quantile.
        canary_over_margin = c_n - _below(canary, c_cum, at + margin_shift)
        high = bernoulli_bound(canary_over_margin, c_n, policy.ni_alpha, lower=False)
        m_low = bernoulli_bound(champion_over, m_n, policy.ni_alpha, lower=True)
        enough = (m_n >= policy.min_latency_samples) & (c_n >= policy.min_latency_samples)
        out.judged[metric] = judged
        out.harm[metric] = enough & (low > m_high)
        out.healthy[metric] = enough & (high < m_low)
        canary_ms = _value(_position(canary, c_cum, q)) * 1000
        champion_ms = _value(at) * 1000
        out.figures |= {
            f"canary_{metric}_ms": np.where(c_n > 0, canary_ms, np.nan),
            f"champion_{metric}_ms": np.where(m_n > 0, champion_ms, np.nan),
            f"{metric}_ratio": np.where((c_n > 0) & (m_n > 0), canary_ms / np.maximum(champion_ms, 1e-12), np.nan),
            f"{metric}_margin": np.where(judged, margin, np.nan),
        }


def _quality(probes: Probes, policy: RolloutPolicy, widening: Array, out: Assessment) -> None:
    evalue = discordance_evalue(probes.worse, probes.better)
    worse_high = bernoulli_bound(probes.worse, probes.asked, policy.ni_alpha, lower=False)
    better_low = bernoulli_bound(probes.better, probes.asked, policy.ni_alpha, lower=True)
    margin = policy.quality_margin * widening
    out.judged["quality"] = probes.judged.astype(bool)
    out.harm["quality"] = evalue >= 1.0 / policy.quality_alpha
    out.healthy["quality"] = (probes.asked > 0) & (worse_high - better_low < margin)
    out.figures |= {
        "probes": probes.asked,
        "canary_probe_accuracy": _ratio(probes.canary_right, probes.asked),
        "champion_probe_accuracy": _ratio(probes.champion_right, probes.asked),
        "probes_worse": probes.worse,
        "probes_better": probes.better,
        "quality_evidence": evalue,
        "quality_drop_upper": np.where(probes.asked > 0, worse_high - better_low, np.nan),
        "quality_margin": margin,
    }


def _ratio(top: Array, bottom: Array) -> Array:
    return np.where(bottom > 0, top / np.maximum(bottom, 1e-12), np.nan)


def _position(counts: Array, cumulative: Array, q: float) -> Array:
    """Where the ``q`` quantile lies, in buckets: bucket ``j`` spans positions [j, j + 1)."""
    total = cumulative[:, -1]
    target = q * total
    index = np.minimum((cumulative < target[:, None]).sum(axis=1), N_BUCKETS - 1)
    rows = np.arange(len(total))
    below = np.where(index > 0, cumulative[rows, np.maximum(index - 1, 0)], 0.0)
    inside = counts[rows, index]
    fraction = np.where(inside > 0, (target - below) / np.maximum(inside, 1e-12), 0.0)
    return np.asarray(index + np.clip(fraction, 0.0, 1.0), dtype=np.float64)


def _below(counts: Array, cumulative: Array, position: Array) -> Array:
    """How many samples lie below ``position`` (buckets, fractional: log-interpolated within a bucket)."""
    position = np.clip(position, 0.0, float(N_BUCKETS))
    index = np.minimum(np.floor(position).astype(int), N_BUCKETS - 1)
    fraction = np.where(position >= N_BUCKETS, 1.0, position - index)
    rows = np.arange(len(position))
    below = np.where(index > 0, cumulative[rows, np.maximum(index - 1, 0)], 0.0)
    return np.asarray(below + fraction * counts[rows, index], dtype=np.float64)


def _value(position: Array) -> Array:
    """Seconds at a bucket position (the last, open bucket reads as its lower bound)."""
    index = np.minimum(np.floor(position).astype(int), N_BUCKETS - 1)
    fraction = np.clip(position - index, 0.0, 1.0)
    lower: Array = _LOWER_EDGES[index]
    upper: Array = np.append(_BOUNDS, _BOUNDS[-1])[index]
    return np.asarray(lower * (upper / lower) ** fraction, dtype=np.float64)


def _confidence(
    figures: Mapping[str, float | int | str], metric: str, lower_key: str | None, policy: RolloutPolicy
) -> str:
    """Which test found the harm: the bound on everything so far, or the sequential test on the same seconds."""
    lower = figures.get(lower_key) if lower_key else None
    if isinstance(lower, int | float) and lower > 0 and metric == "errors":
        return f"at least +{lower:.2%} with {1 - policy.alpha:.1%} confidence"
    evidence = figures.get(f"{metric}_evidence")
    if isinstance(evidence, int | float) and evidence >= 1 / policy.alpha:
        return (
            f"{1 - policy.alpha:.1%} confidence: sequential evidence {evidence:.3g} >= {1 / policy.alpha:.0f} "
            "comparing the two over the same seconds"
        )
    return f"{1 - policy.alpha:.1%} confidence on everything served since the canary started"


def harm_reason(metric: str, figures: Mapping[str, float | int | str], policy: RolloutPolicy) -> str:
    """Why ``metric`` rolls the canary back, in words a person reads in the history."""

    def number(key: str) -> float:
        value = figures.get(key)
        return float(value) if isinstance(value, int | float) else float("nan")

    if metric == "errors":
        return (
            f"canary error rate {number('canary_error_rate'):.2%} is above the champion's "
            f"{number('champion_error_rate'):.2%} ({_confidence(figures, metric, 'error_increase_lower', policy)}; "
            f"{number('canary_requests'):.0f} canary and {number('champion_requests'):.0f} champion requests)"
        )
    if metric == "quality":
        return (
            f"canary answers {number('canary_probe_accuracy'):.1%} of golden probes right against the "
            f"champion's {number('champion_probe_accuracy'):.1%} ({number('probes_worse'):.0f} questions only the "
            f"champion got right, {number('probes_better'):.0f} only the canary; evidence "
            f"{number('quality_evidence'):.3g} >= {1 / policy.quality_alpha:.0f})"
        )
    name, label = metric.rsplit("_", 1)
    return (
        f"canary {LABELS[name]} {label} {number(f'canary_{metric}_ms'):.1f} ms is x{number(f'{metric}_ratio'):.2f} "
        f"the champion's {number(f'champion_{metric}_ms'):.1f} ms: slower than x{policy.latency_tolerance:g} with "
        f"{_confidence(figures, metric, None, policy)}"
    )


def health_summary(assessment: Assessment, row: int, weight: float, policy: RolloutPolicy) -> str:
    """What a step was shown, for the history: each judged metric within its margin at this weight."""
    figures = assessment.row_figures(row)
    parts = [f"errors at most +{figures.get('error_margin', policy.error_margin):.2%}"]
    latency = [LABELS[name] for name in HISTOGRAMS if assessment.judged[f"{name}_p50"][row]]
    if latency:
        p50 = figures.get("latency_p50_margin", policy.latency_margin)
        p95 = figures.get("latency_p95_margin", policy.tail_margin)
        parts.append(f"{', '.join(latency)}: p50 at most x{p50:.2f}, p95 at most x{p95:.2f}")
    if assessment.judged["quality"][row]:
        parts.append(
            f"golden-probe accuracy at most {figures.get('quality_margin', policy.quality_margin):.1%} lower "
            f"({figures.get('probes', 0):.0f} probes)"
        )
    return f"shown within the margins at {weight:g}%: " + "; ".join(parts)


def waiting_for(assessment: Assessment, row: int, last_step: bool) -> list[str]:
    """The judged metrics not yet shown healthy (what a step is waiting for)."""
    return [
        m
        for m in METRICS
        if assessment.judged[m][row] and not assessment.healthy[m][row] and (last_step or not m.endswith("_p95"))
    ]
