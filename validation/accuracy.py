"""Golden-answer accuracy gate: per-question results paired with the base model's, their statistics and the verdict.

The comparison with the base model is paired: both answered the same questions, so only the
discordant questions carry information about the drop. With ``b`` questions the base model got
right and the candidate wrong, and ``c`` the other way round, on ``n`` questions:

* McNemar's test of "no difference" (reported, not gated): exact conditional form
  (``b ~ Binomial(b + c, 1/2)``, two-sided) below 25 discordant pairs, else the asymptotic
  ``(b - c)^2 / (b + c) ~ chi2(1)``. McNemar, Psychometrika 12 (1947) 153-157.
* The drop ``(b - c) / n`` with Tango's asymptotic score interval for a difference of paired
  proportions: the set of ``d`` whose score statistic ``T(d)`` (``_tango_z``) lies within
  ``+-z``. Tango, Stat Med 17 (1998) 891-908, recommended in Fagerland, Lydersen & Laake,
  Stat Med 33 (2014) 2850-2875. ``T(0)`` is McNemar's ``z``, so interval and test agree.

The gate is a non-inferiority test: the drop must be shown to be below ``validate.max_drop``, i.e.
the upper end of the two-sided ``validate.confidence`` interval must lie below it (a one-sided test
at ``(1 - confidence) / 2``, the ICH E9 convention). A drop the data cannot bound fails, however
small its point estimate. See docs/gate.md for the rule, worked figures and the power table.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field
from scipy import optimize, stats

from core.answers import normalize_answer
from core.evaluate import Answer
from core.gx import Finding, run_suite
from core.params import ParamsGroup
from core.stage import StageError

#: Below this many discordant pairs McNemar's chi-squared approximation is poor; use the exact test.
EXACT_MCNEMAR_BELOW = 25
#: Probability mass left out of each tail when enumerating outcomes for the power calculation.
_TAIL = 1e-10


class GateParams(ParamsGroup):
    """The ``validate`` group of params.yaml."""

    min_accuracy: float = Field(ge=0.0, le=1.0)
    min_category_accuracy: float = Field(ge=0.0, le=1.0)
    max_drop: float = Field(gt=0.0, lt=1.0)
    confidence: float = Field(gt=0.5, lt=1.0)
    max_p95_ms: float = Field(gt=0)
    concurrency: int = Field(gt=0)
    timeout_s: float = Field(gt=0)


class ResultRow(BaseModel):
    """One golden question as the served model answered it, and (once paired) as the base model did."""

    id: str
    category: str
    question: str
    expected: str
    answer: str
    correct: bool
    latency_ms: float
    error: str | None = None
    base_answer: str | None = None
    base_correct: bool | None = None


def result_row(
    id: str, category: str, question: str, expected: str, answer: str, latency_ms: float, error: str | None = None
) -> ResultRow:
    """Build a row, judging it by normalized exact match."""
    correct = error is None and normalize_answer(answer) == normalize_answer(expected)
    return ResultRow(
        id=id,
        category=category,
        question=question,
        expected=expected,
        answer=answer,
        correct=correct,
        latency_ms=round(latency_ms, 3),
        error=error,
    )


def check_pairing(question_ids: Sequence[str], base: Sequence[Answer]) -> None:
    """Refuse base answers that do not cover exactly these questions (the pairing needs every one, once)."""
    base_ids = [a.id for a in base]
    known = set(base_ids)
    missing = [q for q in question_ids if q not in known]
    extra = sorted(known - set(question_ids))
    duplicates = len(base_ids) - len(known)
    if missing or extra or duplicates:
        raise StageError(
            f"the base model's answers do not match the golden set ({len(missing)} questions unanswered, "
            f"e.g. {missing[:3]}; {len(extra)} unknown ids, e.g. {extra[:3]}; {duplicates} duplicate ids); "
            "rerun the base_model stage on this golden set (`dvc repro base_model`)"
        )


def pair_rows(rows: Sequence[ResultRow], base: Sequence[Answer]) -> list[ResultRow]:
    """Attach the base model's answer to each row by question id."""
    check_pairing([r.id for r in rows], base)
    by_id = {a.id: a for a in base}
    return [r.model_copy(update={"base_answer": by_id[r.id].answer, "base_correct": by_id[r.id].correct}) for r in rows]


class Summary(BaseModel):
    """Accuracy overall and per category, and latency percentiles."""

    accuracy: float
    per_category: dict[str, float]
    p50_ms: float
    p95_ms: float
    n: int
    errors: int


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(rows: Sequence[ResultRow]) -> Summary:
    """Aggregate the results table."""
    if not rows:
        raise ValueError("no results to summarize: the golden set is empty")
    by_cat: dict[str, list[bool]] = defaultdict(list)
    for row in rows:
        by_cat[row.category].append(row.correct)
    latencies = [r.latency_ms for r in rows]
    return Summary(
        accuracy=round(sum(r.correct for r in rows) / len(rows), 4),
        per_category={c: round(sum(v) / len(v), 4) for c, v in sorted(by_cat.items())},
        p50_ms=round(_percentile(latencies, 0.50), 2),
        p95_ms=round(_percentile(latencies, 0.95), 2),
        n=len(rows),
        errors=sum(r.error is not None for r in rows),
    )


def mcnemar(b: int, c: int) -> tuple[float, Literal["exact", "asymptotic"]]:
    """Two-sided McNemar p-value for ``b`` and ``c`` discordant pairs, and which form computed it."""
    if b + c < EXACT_MCNEMAR_BELOW:
        return (stats.binomtest(b, b + c).pvalue if b + c else 1.0), "exact"
    return float(stats.chi2.sf((b - c) ** 2 / (b + c), df=1)), "asymptotic"


def _tango_z(delta: float, b: npt.ArrayLike, c: npt.ArrayLike, n: int) -> npt.NDArray[np.float64]:
    """Tango's score statistic for "drop == delta", with ``p_c`` at its maximum-likelihood value under it."""
    b_arr, c_arr = np.asarray(b, dtype=float), np.asarray(c, dtype=float)
    lin = -b_arr - c_arr + (2 * n - b_arr + c_arr) * delta
    p_c = (np.sqrt(lin**2 + 8 * n * c_arr * delta * (1 - delta)) - lin) / (4 * n)
    var = n * (2 * p_c + delta * (1 - delta))
    num = b_arr - c_arr - n * delta
    # Inside (-1, 1) var is 0 only at delta == 0 with no discordant pairs, where num is 0 too: no evidence.
    z: npt.NDArray[np.float64] = np.divide(num, np.sqrt(var), out=np.zeros_like(num), where=var > 0)
    return z


def tango_interval(b: int, c: int, n: int, confidence: float) -> tuple[float, float]:
    """Tango's two-sided ``confidence`` score interval for the paired difference ``(b - c) / n``."""
    z = float(stats.norm.ppf((1 + confidence) / 2))

    def root(target: float) -> float:
        return float(optimize.brentq(lambda d: float(_tango_z(d, b, c, n)) - target, -1 + 1e-9, 1 - 1e-9, xtol=1e-12))

    low = -1.0 if c == n else root(z)
    high = 1.0 if b == n else root(-z)
    return low, high


class PairedComparison(BaseModel):
    """The candidate against the base model on the same questions (``b``: lost, ``c``: gained)."""

    n: int
    both_correct: int
    b: int
    c: int
    both_wrong: int
    confidence: float
    drop_low: float
    drop_high: float
    mcnemar_p: float
    mcnemar_test: Literal["exact", "asymptotic"]

    @property
    def reference_accuracy(self) -> float:
        return (self.both_correct + self.b) / self.n

    @property
    def drop(self) -> float:
        return (self.b - self.c) / self.n

    def metrics(self) -> dict[str, object]:
        """The figures for metrics/validate.json, rounded so reruns write the same bytes."""
        return {
            "b": self.b,
            "c": self.c,
            "both_correct": self.both_correct,
            "both_wrong": self.both_wrong,
            "mcnemar_p": float(f"{self.mcnemar_p:.6g}"),
            "mcnemar_test": self.mcnemar_test,
            "confidence": self.confidence,
            "interval": "tango-score",
            "drop_low": round(self.drop_low, 4),
            "drop_high": round(self.drop_high, 4),
        }


def compare(rows: Sequence[ResultRow], confidence: float) -> PairedComparison:
    """McNemar's test and Tango's interval for the drop, from rows paired by ``pair_rows``."""
    if not rows or any(r.base_correct is None for r in rows):
        raise ValueError("compare needs rows paired with the base model's answers (pair_rows)")
    cells = {(True, True): 0, (True, False): 0, (False, True): 0, (False, False): 0}
    for r in rows:
        cells[(bool(r.base_correct), r.correct)] += 1
    b, c, n = cells[(True, False)], cells[(False, True)], len(rows)
    low, high = tango_interval(b, c, n, confidence)
    p, test = mcnemar(b, c)
    return PairedComparison(
        n=n,
        both_correct=cells[(True, True)],
        b=b,
        c=c,
        both_wrong=cells[(False, False)],
        confidence=confidence,
        drop_low=low,
        drop_high=high,
        mcnemar_p=p,
        mcnemar_test=test,
    )


def pass_probability(n: int, discordance: float, margin: float, confidence: float, true_drop: float = 0.0) -> float:
    """Chance that ``n`` questions show a drop below ``margin`` (Tango bound) when the truth is ``true_drop``.

    Exact under the multinomial model: ``b`` and ``c`` are drawn with probabilities
    ``(discordance +- true_drop) / 2`` and every likely ``(b, c)`` is enumerated.
    """
    if not abs(true_drop) <= discordance <= 1:
        raise ValueError(f"need |true_drop| <= discordance <= 1, got {true_drop} and {discordance}")
    p_b, p_c = (discordance + true_drop) / 2, (discordance - true_drop) / 2
    bs = np.arange(stats.binom.ppf(_TAIL, n, p_b), stats.binom.isf(_TAIL, n, p_b) + 1)
    cs = np.arange(0, stats.binom.isf(_TAIL, n, p_c) + 1)
    p_c_given_b = p_c / (1 - p_b) if p_b < 1 else 0.0
    weights = stats.binom.pmf(bs, n, p_b)[:, None] * stats.binom.pmf(cs[None, :], n - bs[:, None], p_c_given_b)
    # The upper bound is below the margin exactly when the score statistic at the margin is below -z.
    shown = _tango_z(margin, bs[:, None], cs[None, :], n) < -stats.norm.ppf((1 + confidence) / 2)
    return float((weights * shown).sum())


def rows_needed(
    discordance: float,
    margin: float,
    confidence: float,
    power: float = 0.8,
    true_drop: float = 0.0,
    max_rows: int = 200_000,
) -> int | None:
    """Fewest golden rows that show a drop below ``margin`` with probability ``power``; None above ``max_rows``.

    Found by doubling then bisection (discreteness makes power slightly saw-toothed in ``n``).
    """
    if true_drop >= margin:
        return None

    def enough(n: int) -> bool:
        return pass_probability(n, discordance, margin, confidence, true_drop) >= power

    high = 1
    while not enough(high):
        if high > max_rows:
            return None
        high *= 2
    low = high // 2  # not enough (0 when one row is)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high


class PowerRow(BaseModel):
    """Golden rows needed to show a drop below ``margin`` at ``confidence``, with ``power``."""

    discordance: float
    margin: float
    confidence: float
    power: float
    rows: int | None


def power_table(
    discordances: Sequence[float], margins: Sequence[float], confidence: float, power: float = 0.8
) -> list[PowerRow]:
    """``rows_needed`` for each discordance rate and margin, assuming the candidate is as good as the base."""
    return [
        PowerRow(
            discordance=round(d, 4),
            margin=m,
            confidence=confidence,
            power=power,
            rows=rows_needed(d, m, confidence, power),
        )
        for d in discordances
        for m in margins
    ]


def check_results(rows: Sequence[ResultRow], params: GateParams) -> list[Finding]:
    """Great Expectations on the results table: answers present, accuracy and latency within bounds."""
    import great_expectations.expectations as gxe
    import pandas as pd

    frame = pd.DataFrame([r.model_dump() for r in rows])
    frame["answer_text"] = frame["answer"].map(lambda a: a.strip() or None)
    frame["correct_score"] = frame["correct"].astype(float)
    return run_suite(
        "golden_results",
        frame,
        [
            gxe.ExpectColumnValuesToBeNull(column="error"),
            gxe.ExpectColumnValuesToNotBeNull(column="answer_text"),
            gxe.ExpectColumnMeanToBeBetween(column="correct_score", min_value=params.min_accuracy),
            # p95 bound: at least 95% of requests under max_p95_ms.
            gxe.ExpectColumnValuesToBeBetween(column="latency_ms", max_value=params.max_p95_ms, mostly=0.95),
        ],
    )


class Verdict(BaseModel):
    """The gate's decision and every rule that failed, worded for a person."""

    passed: bool
    failures: list[str]


def decide(
    summary: Summary, paired: PairedComparison, config_errors: int, findings: Sequence[Finding], params: GateParams
) -> Verdict:
    """Apply the accuracy floors, the paired ``validate.max_drop`` rule, the config check and the results suite."""
    failures = []
    if config_errors:
        failures.append(f"config: {config_errors} config.pbtxt error(s); see `python -m validation check-config`")
    if summary.accuracy < params.min_accuracy:
        failures.append(
            f"validate.min_accuracy: accuracy {summary.accuracy:.4f} is below the minimum {params.min_accuracy:.4f}"
        )
    for category, accuracy in summary.per_category.items():
        if accuracy < params.min_category_accuracy:
            failures.append(
                f"validate.min_category_accuracy: category `{category}` accuracy {accuracy:.4f} is below the floor "
                f"{params.min_category_accuracy:.4f}"
            )
    if not paired.drop_high < params.max_drop:
        failures.append(
            f"validate.max_drop: accuracy dropped {paired.drop:.4f} from the base model's "
            f"{paired.reference_accuracy:.4f} on the same {paired.n} questions ({paired.b} lost, {paired.c} gained; "
            f"McNemar p = {paired.mcnemar_p:.3g}); its {paired.confidence:.0%} interval reaches "
            f"{paired.drop_high:.4f}, so a drop of {params.max_drop:.4f} or more is not ruled out "
            "(more golden rows narrow the interval; see docs/gate.md)"
        )
    for f in findings:
        failures.append(f"results suite: {f.expectation} on `{f.column}`: {f.detail}")
    return Verdict(passed=not failures, failures=failures)
