"""The base model's answers file (written by base_model, read by validate) and validate's refusal of a bad one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from core.evaluate import Answer, Question, judge, score
from core.golden import read_answers, write_answers
from core.stage import StageError
from pipelines.validate import main as validate_main


def _questions(expected: list[str]) -> list[Question]:
    image = Image.new("RGB", (4, 4))
    return [Question(id=f"q{i}", image=image, question="?", answer=a, category="color") for i, a in enumerate(expected)]


def test_judge_agrees_with_score_row_by_row() -> None:
    questions = _questions(["red", "blue", "two"])
    predictions = ["Red.", "green", " two "]
    answers = judge(questions, predictions)
    assert [(a.id, a.answer, a.correct) for a in answers] == [
        ("q0", "Red.", True),
        ("q1", "green", False),
        ("q2", " two ", True),
    ]
    assert score(questions, predictions).accuracy == round(sum(a.correct for a in answers) / 3, 4)
    with pytest.raises(ValueError, match="3 questions but 2 predictions"):
        judge(questions, predictions[:2])


def test_answers_file_round_trips_byte_for_byte(tmp_path: Path) -> None:
    answers = [Answer(id="g1", answer="red", correct=True), Answer(id="g2", answer='say "hi"', correct=False)]
    path = tmp_path / "base" / "answers.jsonl"
    write_answers(path, answers)
    first = path.read_bytes()
    assert first.decode().splitlines()[0] == '{"id":"g1","answer":"red","correct":true}'
    assert read_answers(path) == answers
    write_answers(path, read_answers(path))
    assert path.read_bytes() == first  # reruns write the same bytes, so DVC sees no change


def test_a_bad_answers_file_is_named_with_the_line(tmp_path: Path) -> None:
    path = tmp_path / "answers.jsonl"
    path.write_text('{"id":"g1","answer":"red","correct":true}\n{"id":"g2","answer":"red"}\n')
    with pytest.raises(StageError, match=r"answers.jsonl:2: not an answer row"):
        read_answers(path)
    with pytest.raises(StageError, match="not found; run the base_model stage"):
        read_answers(tmp_path / "missing.jsonl")


def test_validate_without_base_answers_records_a_failed_verdict(tmp_path: Path) -> None:
    package = tmp_path / "package.json"
    package.write_text(json.dumps({"triton_model": "qwen3-vl-v9", "version": 9}))
    metrics = tmp_path / "validate.json"
    metrics.write_text(json.dumps({"passed": True}))  # a stale pass must not survive
    argv = ["--repository", str(tmp_path / "repo"), "--package-metrics", str(package)]
    argv += ["--base-answers", str(tmp_path / "missing.jsonl"), "--golden", str(tmp_path / "golden")]
    argv += ["--report", str(tmp_path / "report"), "--answers", str(tmp_path / "served.jsonl")]
    argv += ["--metrics", str(metrics)]
    assert validate_main(argv) == 1
    written = json.loads(metrics.read_text())
    assert written["passed"] is False and written["model"] == "qwen3-vl-v9"
    assert "run the base_model stage" in written["failures"][0]
