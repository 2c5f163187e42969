"""Golden-answer accuracy gate: per-question results, their summary, the results suite and the verdict."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from pydantic import BaseModel, Field

from core.evaluate import normalize_answer
from core.gx import Finding, run_suite
from core.params import ParamsGroup


class GateParams(ParamsGroup):
    """The ``validate`` group of params.yaml."""

    min_accuracy: float = Field(ge=0.0, le=1.0)
    max_drop: float = Field(ge=0.0, le=1.0)
    max_p95_ms: float = Field(gt=0)
    concurrency: int = Field(gt=0)
    timeout_s: float = Field(gt=0)


class ResultRow(BaseModel):
    """One golden question as the served model answered it."""

    id: str
    category: str
    question: str
    expected: str
    answer: str
    correct: bool
    latency_ms: float
    error: str | None = None


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
    summary: Summary, reference_accuracy: float, config_errors: int, findings: Sequence[Finding], params: GateParams
) -> Verdict:
    """Apply ``validate.min_accuracy``, ``validate.max_drop``, the config check and the results suite."""
    failures = []
    if config_errors:
        failures.append(f"config: {config_errors} config.pbtxt error(s); see `python -m validation check-config`")
    if summary.accuracy < params.min_accuracy:
        failures.append(
            f"validate.min_accuracy: accuracy {summary.accuracy:.4f} is below the minimum {params.min_accuracy:.4f}"
        )
    drop = reference_accuracy - summary.accuracy
    if drop > params.max_drop:
        failures.append(
            f"validate.max_drop: accuracy dropped {drop:.4f} from the base model's {reference_accuracy:.4f} "
            f"(allowed {params.max_drop:.4f})"
        )
    for f in findings:
        failures.append(f"results suite: {f.expectation} on `{f.column}`: {f.detail}")
    return Verdict(passed=not failures, failures=failures)
