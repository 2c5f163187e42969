"""`validate` stage: check the new version's config, serve it in a real Triton, gate it on the golden set.

The config check runs first, so a broken ``config.pbtxt`` stops the stage before any server starts.
The version is then served alone (a temporary repository that links to it, with ``version_policy``
narrowed to it) and the whole golden set goes through the real client. ``metrics/validate.json``
is written whether the gate passes or not (``passed`` says which), so ``register`` can refuse a
failed version by reading it; a failed gate also exits non-zero and names every failing rule.
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
from core.evaluate import Question, describe_drop
from core.files import atomic_dir, write_json
from core.golden import load_questions
from core.manifest import manifest_digest, model_digests
from core.params import load_group
from core.stage import StageError, run_stage
from validation.accuracy import GateParams, ResultRow, check_results, decide, result_row, summarize
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


def validate_version(
    repository: Path,
    model: str,
    version: int,
    golden_dir: Path,
    reference_accuracy: float,
    params: GateParams,
    report_dir: Path,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the config check and the served golden set; write the results table and report to ``report_dir``.

    Returns the verdict's metrics (the same on every machine) and the latency figures (not).
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
    summary = summarize(rows)
    findings = check_results(rows, params)
    verdict = decide(summary, reference_accuracy, len(errors), findings, params)
    latency = {"p50_ms": summary.p50_ms, "p95_ms": summary.p95_ms, "questions": summary.n}
    with atomic_dir(report_dir) as tmp_out:
        write_json(tmp_out / "latency.json", latency)
        with (tmp_out / "results.jsonl").open("w") as fh:
            fh.writelines(r.model_dump_json() + "\n" for r in rows)
        title = f"Validation of {model} version {version}"
        (tmp_out / "report.html").write_text(render_report(title, summary, reference_accuracy, verdict, rows))
    metrics = {
        "model": model,
        "version": version,
        "served_digest": served_digest,
        "accuracy": summary.accuracy,
        "reference_accuracy": reference_accuracy,
        "drop": round(reference_accuracy - summary.accuracy, 4),
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
    parser.add_argument("--base-metrics", type=Path, required=True, help="metrics/base_model.json (reference)")
    parser.add_argument("--golden", type=Path, required=True, help="golden set folder")
    parser.add_argument(
        "--report", type=Path, required=True, help="folder for results.jsonl, report.html, latency.json (untracked)"
    )
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    args = parser.parse_args(argv)

    def body() -> str:
        package = json.loads(args.package_metrics.read_text())
        reference = float(json.loads(args.base_metrics.read_text())["golden_accuracy"])
        model, version = str(package["triton_model"]), int(package["version"])
        try:
            metrics, latency = validate_version(
                args.repository, model, version, args.golden, reference, load_group("validate", GateParams), args.report
            )
        except StageError as exc:
            # Still record the verdict, so `register` refuses this version by reading it.
            failed = {"model": model, "version": version, "accuracy": 0.0, "reference_accuracy": reference}
            failed |= {"drop": reference, "passed": False, "failures": [str(exc)]}
            write_json(args.metrics, failed)
            raise
        write_json(args.metrics, metrics)
        head = (
            f"{model}: accuracy {metrics['accuracy']:.1%} (base {reference:.1%}, {describe_drop(metrics['drop'])}), "
            f"p50 {latency['p50_ms']:.0f} ms, p95 {latency['p95_ms']:.0f} ms"
        )
        if not metrics["passed"]:
            raise StageError(f"gate FAILED for {head}:\n  " + "\n  ".join(metrics["failures"]))
        return f"gate passed for {head} -> {args.report / 'report.html'}"

    return run_stage("validate", body)


if __name__ == "__main__":
    raise SystemExit(main())
