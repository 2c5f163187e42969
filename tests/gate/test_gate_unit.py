"""The accuracy gate's arithmetic, its results suite and its verdict wording."""

from __future__ import annotations

import pytest

from validation.accuracy import GateParams, check_results, decide, result_row, summarize
from validation.report import render_report

PARAMS = GateParams(min_accuracy=0.9, max_drop=0.05, max_p95_ms=500.0, concurrency=8, timeout_s=60.0)


def _rows(correct: int, wrong: int, latency: float = 20.0) -> list:
    rows = [result_row(f"c{i}", "color", "What color?", "red", "Red.", latency) for i in range(correct)]
    rows += [result_row(f"w{i}", "shape", "What shape?", "circle", "square", latency) for i in range(wrong)]
    return rows


def test_normalized_exact_match_counts_red_dot_as_red() -> None:
    assert result_row("a", "color", "q", "red", " Red. ", 1.0).correct
    assert not result_row("a", "color", "q", "red", "dark red", 1.0).correct
    assert not result_row("a", "color", "q", "red", "red", 1.0, error="timeout").correct


def test_summary_per_category_and_percentiles() -> None:
    rows = [result_row(str(i), "color", "q", "red", "red", float(i + 1)) for i in range(100)]
    s = summarize(rows)
    assert s.accuracy == 1.0 and s.per_category == {"color": 1.0}
    assert s.p50_ms == pytest.approx(50.5)
    assert s.p95_ms == pytest.approx(95.05)


def test_gate_passes_a_good_run() -> None:
    rows = _rows(95, 5)
    s = summarize(rows)
    verdict = decide(s, 0.96, 0, check_results(rows, PARAMS), PARAMS)
    assert verdict.passed, verdict.failures


def test_gate_names_min_accuracy_and_max_drop() -> None:
    rows = _rows(80, 20)
    s = summarize(rows)
    verdict = decide(s, 0.96, 0, check_results(rows, PARAMS), PARAMS)
    assert not verdict.passed
    text = "\n".join(verdict.failures)
    assert "validate.min_accuracy: accuracy 0.8000 is below the minimum 0.9000" in text
    assert "validate.max_drop: accuracy dropped 0.1600" in text
    assert "expect_column_mean_to_be_between" in text


def test_results_suite_catches_empty_answers_errors_and_slow_requests() -> None:
    rows = _rows(10, 0, latency=900.0)
    rows.append(result_row("e1", "count", "How many?", "two", "", 10.0))
    rows.append(result_row("e2", "count", "How many?", "two", "", 10.0, error="server unavailable"))
    found = {(f.expectation, f.column): f for f in check_results(rows, PARAMS)}
    assert found[("expect_column_values_to_not_be_null", "answer_text")].rows == ["e1", "e2"]
    assert found[("expect_column_values_to_be_null", "error")].rows == ["e2"]
    assert ("expect_column_values_to_be_between", "latency_ms") in found


def test_config_errors_fail_the_gate() -> None:
    rows = _rows(10, 0)
    verdict = decide(summarize(rows), 1.0, 2, [], PARAMS)
    assert not verdict.passed and "2 config.pbtxt error(s)" in verdict.failures[0]


def test_report_is_escaped_html_with_the_verdict() -> None:
    rows = _rows(1, 1)
    rows.append(result_row("x", "shape", "<script>alert(1)</script>", "a", "b", 1.0))
    s = summarize(rows)
    verdict = decide(s, 1.0, 0, [], PARAMS)
    html = render_report("Validation", s, 1.0, verdict, rows)
    assert "FAILED" in html and "&lt;script&gt;" in html and "<script>" not in html
