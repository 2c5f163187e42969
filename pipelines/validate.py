"""`validate` stage: check the new version's config, serve it in a real Triton, gate it on the golden set.

The config check runs first, so a broken ``config.pbtxt`` stops the stage before any server starts.
The version is then served alone (a temporary repository that links to it, with ``version_policy``
narrowed to it) and the whole golden set goes through the real client. ``metrics/validate.json``
is written whether the gate passes or not (``passed`` says which), so ``register`` can refuse a
failed version by reading it; a failed gate also exits non-zero and names every failing rule.
Accuracy is compared with the base model's on the same questions (its answers file, written by
``base_model``): McNemar's test and a paired interval for the drop (validation/accuracy.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from core.contract import CONFIG_FILE
from core.evaluate import Answer, Question
from core.files import atomic_dir, write_json
from core.golden import load_questions, read_answers, write_answers
from core.manifest import manifest_digest, model_digests
from core.params import load_group
from core.stage import StageError, run_stage
from core.wording import describe_drop
from validation.accuracy import (
    GateParams,
    PairedComparison,
    PowerRow,
    ResultRow,
    check_pairing,
    check_results,
    compare,
    decide,
    pair_rows,
    power_table,
    result_row,
    summarize,
)
from validation.report import render_report

log = logging.getLogger(__name__)


def config_errors(config: Path) -> list[str]:
    """Every error the config checker finds in ``config`` (printed as ``path:line: error: message``)."""
    from validation.check import check_paths
    from validation.context import Target

    # Judged against the server this project launches: the Python backend (GPU count unknown here).
    return [f.format() for f in check_paths([config], Target(backends=frozenset({"python"}))) if f.severity == "error"]


def ask_golden(
    url: str, model: str, version: int, questions: Sequence[Question], params: GateParams
) -> list[ResultRow]:
    """Send every golden question through the real client, ``params.concurrency`` at a time."""
    from serving.triton.client import TritonChatClient, TritonClientError, user_message

    with TritonChatClient(url, model, timeout_s=params.timeout_s) as client:

        def ask(q: Question) -> ResultRow:
            try:
                res = client.chat([user_message(q.question, [q.image])], model_version=version)
            except TritonClientError as exc:
                return result_row(q.id, q.category, q.question, q.answer, "", 0.0, error=str(exc))
            return result_row(q.id, q.category, q.question, q.answer, res.text, res.latency_s * 1000)

        with ThreadPoolExecutor(max_workers=params.concurrency) as pool:
            return list(pool.map(ask, questions))


def _power_at_observed_discordance(paired: PairedComparison, params: GateParams) -> list[PowerRow]:
    """Golden rows needed to show a drop below ``max_drop`` (and 2 and 5 points) at the discordance seen here."""
    margins = sorted({params.max_drop, 0.02, 0.05})
    return power_table([(paired.b + paired.c) / paired.n], margins, params.confidence)


def validate_version(
    repository: Path,
    model: str,
    version: int,
    golden_dir: Path,
    base_answers: Sequence[Answer],
    params: GateParams,
    report_dir: Path,
    answers_path: Path | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the config check and the served golden set, paired with ``base_answers`` question by question.

    Writes the results table, power table and report to ``report_dir`` and the served answers
    (``id``, ``answer``, ``correct``: the same on every machine) to ``answers_path``; returns the
    verdict's metrics (the same on every machine) and the latency figures (not).
    """
    from serving.triton.launcher import TritonError, TritonServer, free_ports
    from serving.triton.repository import ServedModel, place
    from serving.triton.settings import TritonSettings

    model_dir = repository / model
    if not (model_dir / str(version)).is_dir():
        raise StageError(f"{model_dir / str(version)}: no such version folder; run the package stage first")
    errors = config_errors(model_dir / CONFIG_FILE)
    if errors:
        raise StageError(
            "config.pbtxt has errors; Triton would refuse it, so no server was started:\n  " + "\n  ".join(errors)
        )
    questions = load_questions(golden_dir)
    check_pairing([q.id for q in questions], base_answers)  # before a server starts: a stale pairing is no gate
    served_digest = manifest_digest(model_digests(model_dir, str(version)))
    with tempfile.TemporaryDirectory(prefix="validate-") as tmp:
        repo = Path(tmp) / "repo"
        place(ServedModel(model, version, model_dir, str(version)), repo)
        http, grpc, metrics_port = free_ports(3)
        settings = TritonSettings(http_port=http, grpc_port=grpc, metrics_port=metrics_port)
        try:
            with TritonServer(repo, settings, run_dir=Path(tmp) / "run", load_models=[model]) as server:
                rows = ask_golden(server.http_url, model, version, questions, params)
        except TritonError as exc:
            raise StageError(f"{model} version {version} could not be served, so it fails validation: {exc}") from exc
    if manifest_digest(model_digests(model_dir, str(version))) != served_digest:
        raise StageError(f"{model_dir} changed while it was being validated; rerun `dvc repro`")
    rows = pair_rows(rows, base_answers)
    if answers_path is not None:
        write_answers(answers_path, [Answer(id=r.id, answer=r.answer, correct=r.correct) for r in rows])
    summary = summarize(rows)
    paired = compare(rows, params.confidence)
    verdict = decide(summary, paired, len(errors), check_results(rows, params), params)
    power = _power_at_observed_discordance(paired, params)
    latency = {"p50_ms": summary.p50_ms, "p95_ms": summary.p95_ms, "questions": summary.n}
    with atomic_dir(report_dir) as tmp_out:
        write_json(tmp_out / "latency.json", latency)
        write_json(tmp_out / "power.json", [row.model_dump() for row in power])
        with (tmp_out / "results.jsonl").open("w") as fh:
            fh.writelines(r.model_dump_json() + "\n" for r in rows)
        title = f"Validation of {model} version {version}"
        (tmp_out / "report.html").write_text(render_report(title, summary, paired, verdict, rows, power, params))
    rows_needed = next(row.rows for row in power if row.margin == params.max_drop)
    metrics = {
        "model": model,
        "version": version,
        "served_digest": served_digest,
        "accuracy": summary.accuracy,
        "reference_accuracy": round(paired.reference_accuracy, 4),
        "drop": round(paired.drop, 4),
        "paired": paired.metrics() | {"rows_needed": rows_needed},
        "per_category": summary.per_category,
        "questions": summary.n,
        "request_errors": summary.errors,
        "config_errors": len(errors),
        "passed": verdict.passed,
        "failures": verdict.failures,
    }
    return metrics, latency


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.validate", description=__doc__)
    parser.add_argument("--repository", type=Path, required=True, help="Triton model repository")
    parser.add_argument("--package-metrics", type=Path, required=True, help="metrics/package.json (model, version)")
    parser.add_argument(
        "--base-answers", type=Path, required=True, help="the base model's per-question answers (base_model stage)"
    )
    parser.add_argument("--golden", type=Path, required=True, help="golden set folder")
    parser.add_argument(
        "--report", type=Path, required=True, help="folder for results.jsonl, report.html, latency.json (untracked)"
    )
    parser.add_argument(
        "--answers", type=Path, required=True, help="the served model's per-question answers JSONL to write"
    )
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    args = parser.parse_args(argv)

    def body() -> str:
        package = json.loads(args.package_metrics.read_text())
        model, version = str(package["triton_model"]), int(package["version"])
        failed: dict[str, Any] = {"model": model, "version": version, "accuracy": 0.0, "passed": False}
        try:
            base = read_answers(args.base_answers)
            reference = round(sum(a.correct for a in base) / len(base), 4) if base else 0.0
            failed |= {"reference_accuracy": reference, "drop": reference}
            gate = load_group("validate", GateParams)
            metrics, latency = validate_version(
                args.repository, model, version, args.golden, base, gate, args.report, args.answers
            )
        except StageError as exc:
            # Still record the verdict, so `register` refuses this version by reading it.
            write_json(args.metrics, failed | {"failures": [str(exc)]})
            raise
        write_json(args.metrics, metrics)
        paired = metrics["paired"]
        head = (
            f"{model}: accuracy {metrics['accuracy']:.1%} (base {metrics['reference_accuracy']:.1%}, "
            f"{describe_drop(metrics['drop'])}; {paired['b']} lost, {paired['c']} gained, "
            f"McNemar p {paired['mcnemar_p']:.3g}, {paired['confidence']:.0%} interval for the drop "
            f"[{paired['drop_low']:.4f}, {paired['drop_high']:.4f}]), "
            f"p50 {latency['p50_ms']:.0f} ms, p95 {latency['p95_ms']:.0f} ms"
        )
        if not metrics["passed"]:
            raise StageError(f"gate FAILED for {head}:\n  " + "\n  ".join(metrics["failures"]))
        return f"gate passed for {head} -> {args.report / 'report.html'}"

    return run_stage("validate", body)


if __name__ == "__main__":
    raise SystemExit(main())
