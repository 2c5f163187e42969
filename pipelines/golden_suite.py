"""Great Expectations suite for the golden set: every failing expectation names the rows it caught."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

log = logging.getLogger(__name__)


class Finding(BaseModel):
    """One failed expectation and the ids of the rows that broke it."""

    expectation: str
    column: str | None
    rows: list[str]
    detail: str


def _image_ok(base: Path, rel: object) -> bool:
    from PIL import Image, UnidentifiedImageError

    if not isinstance(rel, str) or not rel:
        return False
    try:
        with Image.open(base / rel) as img:
            img.load()
    except (OSError, UnidentifiedImageError, ValueError):
        return False
    return True


def check_golden(rows: Sequence[dict[str, Any]], base: Path, categories: Sequence[str], min_rows: int) -> list[Finding]:
    """Run the suite on ``rows`` (images relative to ``base``); an empty list means the set is good."""
    import great_expectations as gx
    import great_expectations.expectations as gxe
    import pandas as pd

    frame = pd.DataFrame(list(rows), columns=["id", "image", "question", "answer", "category"])
    frame["id"] = frame["id"].astype(str)
    for name in ("question", "answer"):
        frame[f"{name}_text"] = frame[name].map(lambda v: v.strip() if isinstance(v, str) else None)
    frame["image_decodes"] = frame["image"].map(lambda rel: _image_ok(base, rel))

    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("golden")
        .add_dataframe_asset("rows")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    suite = gx.ExpectationSuite(name="golden_set")
    for expectation in (
        gxe.ExpectTableRowCountToBeBetween(min_value=min_rows),
        gxe.ExpectColumnValuesToNotBeNull(column="id"),
        gxe.ExpectColumnValuesToBeUnique(column="id"),
        gxe.ExpectColumnValuesToNotBeNull(column="question_text"),
        gxe.ExpectColumnValueLengthsToBeBetween(column="question_text", min_value=1),
        gxe.ExpectColumnValuesToNotBeNull(column="answer_text"),
        gxe.ExpectColumnValueLengthsToBeBetween(column="answer_text", min_value=1),
        gxe.ExpectColumnValuesToBeInSet(column="category", value_set=list(categories)),
        gxe.ExpectColumnValuesToBeInSet(column="image_decodes", value_set=[True]),
    ):
        suite.add_expectation(expectation)
    result = batch.validate(suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["id"]})
    findings = []
    for res in result.results:
        if res.success:
            continue
        cfg = res.expectation_config
        kind = cfg.type if cfg is not None else "unknown"
        column: str | None = cfg.kwargs.get("column") if cfg is not None else None
        detail = res.result or {}
        ids = [str(i["id"]) if isinstance(i, dict) else str(i) for i in detail.get("unexpected_index_list") or []]
        msg: str
        if kind == "expect_table_row_count_to_be_between":
            msg = f"{detail.get('observed_value')} rows, need at least {min_rows}"
        else:
            msg = f"{len(ids)} offending row(s)"
        findings.append(Finding(expectation=kind, column=column, rows=ids, detail=msg))
    log.info("golden suite: %d expectations, %d failed", len(suite.expectations), len(findings))
    return findings


def describe(findings: Sequence[Finding], limit: int = 10) -> str:
    """A human summary: which rule, which column, which rows (first ``limit``)."""
    lines = []
    for f in findings:
        shown = ", ".join(f.rows[:limit]) + (f" (+{len(f.rows) - limit} more)" if len(f.rows) > limit else "")
        where = f" on `{f.column}`" if f.column else ""
        lines.append(f"{f.expectation}{where}: {f.detail}" + (f": rows {shown}" if shown else ""))
    return "\n  ".join(lines)
