"""The golden set: its file format, its Great Expectations suite, and in-process accuracy on it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from core.answers import ROWS_FILE, read_rows
from core.evaluate import Accuracy, Answer, Question, generate_answers, judge, score
from core.files import write_bytes
from core.gx import Finding, run_suite
from core.params import EvalParams
from core.stage import StageError


def _image_ok(base: Path, rel: object) -> bool:
    from PIL import Image, UnidentifiedImageError

    if not isinstance(rel, str) or not rel:
        return False
    path = (base / rel).resolve()
    if not path.is_relative_to(base.resolve()):
        return False  # the set must hold its images; a path outside it is not part of the set
    try:
        with Image.open(path) as img:
            img.load()
    except (OSError, UnidentifiedImageError, ValueError):
        return False
    return True


def check_golden(rows: Sequence[dict[str, Any]], base: Path, categories: Sequence[str], min_rows: int) -> list[Finding]:
    """Run the suite on ``rows`` (images relative to ``base``); an empty list means the set is good."""
    import great_expectations.expectations as gxe
    import pandas as pd

    frame = pd.DataFrame(list(rows), columns=["id", "image", "question", "answer", "category"])
    frame["id"] = frame["id"].astype(str)
    for name in ("question", "answer"):
        frame[f"{name}_text"] = frame[name].map(lambda v: v.strip() if isinstance(v, str) else None)
    frame["image_decodes"] = frame["image"].map(lambda rel: _image_ok(base, rel))
    return run_suite(
        "golden_set",
        frame,
        [
            gxe.ExpectTableRowCountToBeBetween(min_value=min_rows),
            gxe.ExpectColumnValuesToNotBeNull(column="id"),
            gxe.ExpectColumnValuesToBeUnique(column="id"),
            gxe.ExpectColumnValuesToNotBeNull(column="question_text"),
            gxe.ExpectColumnValueLengthsToBeBetween(column="question_text", min_value=1),
            gxe.ExpectColumnValuesToNotBeNull(column="answer_text"),
            gxe.ExpectColumnValueLengthsToBeBetween(column="answer_text", min_value=1),
            gxe.ExpectColumnValuesToBeInSet(column="category", value_set=list(categories)),
            gxe.ExpectColumnValuesToBeInSet(column="image_decodes", value_set=[True]),
        ],
    )


def load_questions(golden_dir: Path) -> list[Question]:
    """The golden set as ``Question``s with decoded images, in file order."""
    out = []
    for row in read_rows(golden_dir / ROWS_FILE):
        from PIL import Image

        with Image.open(golden_dir / row["image"]) as img:
            image = img.convert("RGB")
        out.append(
            Question(
                id=str(row["id"]), image=image, question=row["question"], answer=row["answer"], category=row["category"]
            )
        )
    return out


def golden_accuracy(model: Any, processor: Any, golden_dir: Path, ev: EvalParams) -> Accuracy:
    """In-process accuracy of a loaded model on the golden set in ``golden_dir``."""
    return golden_answers(model, processor, golden_dir, ev)[0]


def golden_answers(model: Any, processor: Any, golden_dir: Path, ev: EvalParams) -> tuple[Accuracy, list[Answer]]:
    """In-process accuracy on the golden set and every question's judged answer, in file order."""
    questions = load_questions(golden_dir)
    answers = generate_answers(model, processor, questions, batch_size=ev.batch_size, max_new_tokens=ev.max_new_tokens)
    return score(questions, answers), judge(questions, answers)


def write_answers(path: Path, answers: Sequence[Answer]) -> None:
    """Write per-question answers as JSONL (``id``, ``answer``, ``correct``), atomically and byte-stable."""
    write_bytes(path, "".join(a.model_dump_json() + "\n" for a in answers).encode())


def read_answers(path: Path) -> list[Answer]:
    """Parse an answers file written by ``write_answers``; a bad line is named with its number."""
    if not path.is_file():
        raise StageError(f"{path}: not found; run the base_model stage (`dvc repro base_model`)")
    answers = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            answers.append(Answer.model_validate_json(line))
        except ValidationError as exc:
            raise StageError(
                f"{path}:{number}: not an answer row (id, answer, correct): {exc.errors()[0]['msg']}"
            ) from exc
    return answers
