"""Great Expectations suite for the golden set: ids, texts, categories, images and size."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.gx_suite import Finding, run_suite


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
