"""A self-contained HTML report of one validation run: verdict, figures, per category, wrong answers."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from core.evaluate import describe_drop
from validation.accuracy import ResultRow, Summary, Verdict

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem;color:#1b1f24}
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #d0d7de;padding:.3rem .6rem;text-align:left}
th{background:#f6f8fa}.pass{color:#1a7f37}.fail{color:#cf222e}code{background:#f6f8fa;padding:0 .2rem}
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_report(
    title: str,
    summary: Summary,
    reference_accuracy: float,
    verdict: Verdict,
    rows: Sequence[ResultRow],
    limit: int = 50,
) -> str:
    """The report as one HTML document (no external assets)."""
    status = '<b class="pass">PASSED</b>' if verdict.passed else '<b class="fail">FAILED</b>'
    failures = "".join(f"<li>{escape(f)}</li>" for f in verdict.failures)
    wrong = [r for r in rows if not r.correct]
    figures = _table(
        ["figure", "value"],
        [
            ("accuracy", f"{summary.accuracy:.2%}"),
            ("reference accuracy (base model)", f"{reference_accuracy:.2%}"),
            ("change from the base model", describe_drop(reference_accuracy - summary.accuracy)),
            ("p50 latency", f"{summary.p50_ms:.1f} ms"),
            ("p95 latency", f"{summary.p95_ms:.1f} ms"),
            ("questions", summary.n),
            ("request errors", summary.errors),
        ],
    )
    per_cat = _table(["category", "accuracy"], [(c, f"{a:.2%}") for c, a in summary.per_category.items()])
    wrong_table = _table(
        ["id", "category", "question", "expected", "answer", "error"],
        [(r.id, r.category, r.question, r.expected, r.answer, r.error or "") for r in wrong[:limit]],
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{escape(title)}</h1><p>Gate: {status}</p>"
        + (f"<ul>{failures}</ul>" if failures else "")
        + f"<h2>Figures</h2>{figures}<h2>Per category</h2>{per_cat}"
        + f"<h2>Wrong answers ({len(wrong)}; first {min(limit, len(wrong))})</h2>{wrong_table}</body></html>\n"
    )
