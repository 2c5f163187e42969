"""Run a Great Expectations suite on a pandas frame; each failure names the rows that broke it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

log = logging.getLogger(__name__)


class Finding(BaseModel):
    """One failed expectation and the ids of the rows that broke it."""

    expectation: str
    column: str | None
    rows: list[str]
    detail: str


def run_suite(name: str, frame: Any, expectations: Sequence[Any], id_column: str = "id") -> list[Finding]:
    """Validate ``frame`` in an ephemeral GX context; an empty list means every expectation held."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas(name)
        .add_dataframe_asset("rows")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    suite = gx.ExpectationSuite(name=name)
    for expectation in expectations:
        suite.add_expectation(expectation)
    result = batch.validate(
        suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [id_column]}
    )
    findings = []
    for res in result.results:
        if res.success:
            continue
        cfg = res.expectation_config
        kind = cfg.type if cfg is not None else "unknown"
        column: str | None = cfg.kwargs.get("column") if cfg is not None else None
        detail = res.result or {}
        ids = [str(i[id_column]) if isinstance(i, dict) else str(i) for i in detail.get("unexpected_index_list") or []]
        observed = detail.get("observed_value")
        if ids:
            msg = f"{len(ids)} offending row(s)"
        elif cfg is not None:
            bounds = {k: cfg.kwargs[k] for k in ("min_value", "max_value") if cfg.kwargs.get(k) is not None}
            msg = f"observed {observed}, expected {bounds}"
        else:
            msg = f"observed {observed}"
        findings.append(Finding(expectation=kind, column=column, rows=ids, detail=msg))
    log.info("%s suite: %d expectations, %d failed", name, len(suite.expectations), len(findings))
    return findings


def describe(findings: Sequence[Finding], limit: int = 10) -> str:
    """A human summary: which rule, which column, which rows (first ``limit``)."""
    lines = []
    for f in findings:
        shown = ", ".join(f.rows[:limit]) + (f" (+{len(f.rows) - limit} more)" if len(f.rows) > limit else "")
        where = f" on `{f.column}`" if f.column else ""
        lines.append(f"{f.expectation}{where}: {f.detail}" + (f": rows {shown}" if shown else ""))
    return "\n  ".join(lines)
