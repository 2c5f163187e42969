"""A self-contained HTML report of one validation run: verdict, paired statistics, per category, disagreements."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from html import escape

from core.wording import describe_drop
from validation.accuracy import GateParams, PairedComparison, PowerRow, ResultRow, Summary, Verdict

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem;color:#1b1f24}
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #d0d7de;padding:.3rem .6rem;text-align:left}
th{background:#f6f8fa}.pass{color:#1a7f37}.fail{color:#cf222e}code{background:#f6f8fa;padding:0 .2rem}
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figures(summary: Summary, paired: PairedComparison, params: GateParams) -> str:
    level = f"{paired.confidence:.0%}"
    return _table(
        ["figure", "value"],
        [
            ("accuracy", f"{summary.accuracy:.2%}"),
            ("reference accuracy (base model, same questions)", f"{paired.reference_accuracy:.2%}"),
            ("change from the base model", describe_drop(paired.drop)),
            ("answers lost (b: base right, candidate wrong)", paired.b),
            ("answers gained (c: base wrong, candidate right)", paired.c),
            ("both right / both wrong", f"{paired.both_correct} / {paired.both_wrong}"),
            (f"McNemar p ({paired.mcnemar_test}, two-sided)", f"{paired.mcnemar_p:.4g}"),
            (f"{level} interval for the drop (Tango score)", f"[{paired.drop_low:.4f}, {paired.drop_high:.4f}]"),
            ("drop shown to be below validate.max_drop", f"{paired.drop_high < params.max_drop} ({params.max_drop})"),
            ("p50 latency", f"{summary.p50_ms:.1f} ms"),
            ("p95 latency", f"{summary.p95_ms:.1f} ms"),
            ("questions", summary.n),
            ("request errors", summary.errors),
        ],
    )


def _per_category(rows: Sequence[ResultRow], params: GateParams) -> str:
    cells: dict[str, list[ResultRow]] = defaultdict(list)
    for r in rows:
        cells[r.category].append(r)
    table = []
    for category, group in sorted(cells.items()):
        acc = sum(r.correct for r in group) / len(group)
        base = sum(bool(r.base_correct) for r in group) / len(group)
        lost = sum(bool(r.base_correct) and not r.correct for r in group)
        gained = sum(not r.base_correct and r.correct for r in group)
        floor = "ok" if acc >= params.min_category_accuracy else f"below {params.min_category_accuracy}"
        table.append((category, len(group), f"{base:.2%}", f"{acc:.2%}", lost, gained, floor))
    return _table(["category", "questions", "base", "candidate", "lost", "gained", "floor"], table)


def render_report(
    title: str,
    summary: Summary,
    paired: PairedComparison,
    verdict: Verdict,
    rows: Sequence[ResultRow],
    power: Sequence[PowerRow],
    params: GateParams,
    limit: int = 50,
) -> str:
    """The report as one HTML document (no external assets); ``rows`` are paired with the base model's."""
    status = '<b class="pass">PASSED</b>' if verdict.passed else '<b class="fail">FAILED</b>'
    failures = "".join(f"<li>{escape(f)}</li>" for f in verdict.failures)
    disagree = [r for r in rows if r.base_correct is not None and r.base_correct != r.correct]
    wrong = [r for r in rows if not r.correct]
    power_rows = [
        (
            f"{p.discordance:.2%}",
            f"{p.margin * 100:g} points",
            f"{p.power:.0%}",
            "beyond the search limit" if p.rows is None else p.rows,
        )
        for p in power
    ]
    sections = [
        f"<h2>Figures</h2>{_figures(summary, paired, params)}",
        f"<h2>Per category</h2>{_per_category(rows, params)}",
        f"<h2>Disagreements with the base model ({len(disagree)}; first {min(limit, len(disagree))})</h2>",
        _table(
            ["id", "category", "question", "expected", "base answer", "candidate answer", "who is right"],
            [
                (
                    r.id,
                    r.category,
                    r.question,
                    r.expected,
                    r.base_answer,
                    r.answer,
                    "candidate" if r.correct else "base",
                )
                for r in disagree[:limit]
            ],
        ),
        f"<h2>Golden rows needed (discordance as observed, {paired.confidence:.0%} confidence)</h2>",
        "<p>Rows needed for the interval's upper end to fall below each margin with the given power, if the "
        "candidate is truly as accurate as the base model.</p>",
        _table(["discordance rate", "margin", "power", "rows needed"], power_rows),
        f"<h2>Wrong answers ({len(wrong)}; first {min(limit, len(wrong))})</h2>",
        _table(
            ["id", "category", "question", "expected", "answer", "base right", "error"],
            [
                (r.id, r.category, r.question, r.expected, r.answer, r.base_correct, r.error or "")
                for r in wrong[:limit]
            ],
        ),
    ]
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{escape(title)}</h1><p>Gate: {status}</p>"
        + (f"<ul>{failures}</ul>" if failures else "")
        + "".join(sections)
        + "</body></html>\n"
    )
