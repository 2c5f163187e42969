"""The accuracy gate's arithmetic, its results suite, its pairing with the base model and its verdict wording."""

from __future__ import annotations

import pytest

from core.evaluate import Answer
from core.stage import StageError
from validation.accuracy import (
    GateParams,
    ResultRow,
    check_results,
    compare,
    decide,
    pair_rows,
    power_table,
    result_row,
    summarize,
)
from validation.report import render_report

PARAMS = GateParams(
    min_accuracy=0.9,
    min_category_accuracy=0.85,
    max_drop=0.05,
    confidence=0.95,
    max_p95_ms=500.0,
    concurrency=8,
    timeout_s=60.0,
)


def _rows(correct: int, wrong: int, latency: float = 20.0) -> list[ResultRow]:
    rows = [result_row(f"c{i}", "color", "What color?", "red", "Red.", latency) for i in range(correct)]
    rows += [result_row(f"w{i}", "shape", "What shape?", "circle", "square", latency) for i in range(wrong)]
    return rows


def _base(rows: list[ResultRow], right: int) -> list[Answer]:
    """The base model's answers to ``rows``: the first ``right`` correct, the rest wrong."""
    return [Answer(id=r.id, answer="base", correct=i < right) for i, r in enumerate(rows)]


def _paired(both: int, lost: int, gained: int, neither: int, category: str = "color") -> list[ResultRow]:
    """Rows paired with the base model: both right, base only (lost), candidate only (gained), neither."""
    spec = [(True, True)] * both + [(True, False)] * lost + [(False, True)] * gained + [(False, False)] * neither
    return [
        result_row(f"{category}{i}", category, "q", "red", "red" if cand else "blue", 10.0).model_copy(
            update={"base_correct": base, "base_answer": "red" if base else "blue"}
        )
        for i, (base, cand) in enumerate(spec)
    ]


def _verdict(rows: list[ResultRow], params: GateParams = PARAMS) -> list[str]:
    return decide(summarize(rows), compare(rows, params.confidence), 0, [], params).failures


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
    # 300 questions, 2 lost and 1 gained: a drop of 0.3 points, bounded well below 5.
    rows = _paired(280, 2, 1, 17)
    assert _verdict(rows) == []


def test_gate_names_min_accuracy_and_max_drop() -> None:
    rows = _rows(80, 20)
    paired = pair_rows(rows, _base(rows, 96))
    verdict = decide(summarize(paired), compare(paired, 0.95), 0, check_results(paired, PARAMS), PARAMS)
    assert not verdict.passed
    text = "\n".join(verdict.failures)
    assert "validate.min_accuracy: accuracy 0.8000 is below the minimum 0.9000" in text
    assert "validate.max_drop: accuracy dropped 0.1600 from the base model's 0.9600 on the same 100 questions" in text
    assert "(16 lost, 0 gained" in text
    assert "expect_column_mean_to_be_between" in text


def test_six_of_300_answers_with_few_discordant_pairs_is_not_shown_under_two_points() -> None:
    # The old rule, `drop > max_drop` on raw accuracies, passed both: 6/300 is exactly 0.02, 5/300 below it.
    params = PARAMS.model_copy(update={"max_drop": 0.02})
    for lost in (6, 5):
        rows = _paired(285 - lost, lost, 0, 15)
        paired = compare(rows, 0.95)
        assert paired.drop <= params.max_drop  # the raw difference looks acceptable...
        assert paired.drop_high > params.max_drop  # ...but the data cannot rule out a larger one
        failures = _verdict(rows, params)
        assert len(failures) == 1 and failures[0].startswith(f"validate.max_drop: accuracy dropped {lost / 300:.4f}")
        assert "so a drop of 0.0200 or more is not ruled out" in failures[0]


def test_one_lost_answer_in_300_is_shown_under_two_points() -> None:
    # The shipped tiny model's own table (295 both right, 1 lost, 4 both wrong): bounded at 1.86 points.
    paired = compare(_paired(295, 1, 0, 4), 0.95)
    assert (paired.b, paired.c, paired.mcnemar_p, paired.mcnemar_test) == (1, 0, 1.0, "exact")
    assert paired.drop_high == pytest.approx(0.018637, abs=1e-6)
    assert _verdict(_paired(295, 1, 0, 4), PARAMS.model_copy(update={"max_drop": 0.02})) == []


def test_too_few_rows_cannot_show_a_small_drop_even_with_perfect_agreement() -> None:
    # 60 identical answers bound the drop only at z^2 / (n + z^2) = 6.0 points.
    failures = _verdict(_paired(60, 0, 0, 0))
    assert len(failures) == 1 and "its 95% interval reaches 0.0602" in failures[0]
    assert _verdict(_paired(60, 0, 0, 0), PARAMS.model_copy(update={"max_drop": 0.07})) == []


def test_per_category_floor_names_the_category() -> None:
    rows = _paired(100, 0, 0, 0, "color") + _paired(170, 0, 0, 30, "shape")
    assert _verdict(rows) == []  # 0.85 is at the floor, not below it
    strict = _verdict(rows, PARAMS.model_copy(update={"min_category_accuracy": 0.9}))
    assert strict == ["validate.min_category_accuracy: category `shape` accuracy 0.8500 is below the floor 0.9000"]


def test_pairing_refuses_base_answers_for_other_questions() -> None:
    rows = _rows(3, 0)
    base = [Answer(id="c0", answer="red", correct=True), Answer(id="zz", answer="red", correct=True)]
    with pytest.raises(StageError, match=r"2 questions unanswered.*1 unknown ids.*dvc repro base_model"):
        pair_rows(rows, base)
    with pytest.raises(StageError, match="1 duplicate ids"):
        pair_rows(rows, _base(rows, 3) + _base(rows, 3)[:1])
    paired = pair_rows(rows, _base(rows, 2))
    assert [(r.base_correct, r.correct) for r in paired] == [(True, True), (True, True), (False, True)]


def test_compare_refuses_unpaired_rows() -> None:
    with pytest.raises(ValueError, match="pair_rows"):
        compare(_rows(3, 0), 0.95)


def test_results_suite_catches_empty_answers_errors_and_slow_requests() -> None:
    rows = _rows(10, 0, latency=900.0)
    rows.append(result_row("e1", "count", "How many?", "two", "", 10.0))
    rows.append(result_row("e2", "count", "How many?", "two", "", 10.0, error="server unavailable"))
    found = {(f.expectation, f.column): f for f in check_results(rows, PARAMS)}
    assert found[("expect_column_values_to_not_be_null", "answer_text")].rows == ["e1", "e2"]
    assert found[("expect_column_values_to_be_null", "error")].rows == ["e2"]
    assert ("expect_column_values_to_be_between", "latency_ms") in found


def test_config_errors_fail_the_gate() -> None:
    rows = _paired(300, 0, 0, 0)
    verdict = decide(summarize(rows), compare(rows, 0.95), 2, [], PARAMS)
    assert not verdict.passed and "2 config.pbtxt error(s)" in verdict.failures[0]


def test_report_is_escaped_html_with_the_verdict_and_the_paired_figures() -> None:
    rows = _paired(1, 1, 0, 0)
    rows.append(
        result_row("x", "shape", "<script>alert(1)</script>", "a", "b", 1.0).model_copy(update={"base_correct": True})
    )
    paired = compare(rows, 0.95)
    verdict = decide(summarize(rows), paired, 0, [], PARAMS)
    html = render_report("Validation", summarize(rows), paired, verdict, rows, power_table([0.1], [0.05], 0.95), PARAMS)
    assert "FAILED" in html and "&lt;script&gt;" in html and "<script>" not in html
    assert "answers lost (b: base right, candidate wrong)</td><td>2" in html
    assert "McNemar p (exact, two-sided)" in html and "interval for the drop (Tango score)" in html
    assert "Disagreements with the base model (2; first 2)" in html
    assert "rows needed" in html
