"""`base_model` stage: check that ``model.source`` is a Qwen3-VL checkpoint and record its golden answers.

The checkpoint is read where it lies (DVC tracks ``model.source``); nothing is copied or linked,
so no later stage can write into a user's checkpoint. Every question's answer and verdict go to an
answers file (``id``, ``answer``, ``correct``; no timings), which ``validate`` pairs row by row with
the served candidate's for its McNemar test and paired interval.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from core import checkpoint
from core.evaluate import Answer
from core.files import weights_bytes, write_json
from core.golden import golden_answers, write_answers
from core.params import EvalParams, ModelParams, load_group
from core.stage import run_stage


def evaluate_base_model(model: ModelParams, ev: EvalParams, golden_dir: Path) -> tuple[dict[str, Any], list[Answer]]:
    """Evaluate the source checkpoint in-process on the golden set; return the stage's metrics and answers."""
    source = checkpoint.resolve_source(model.source)
    device = checkpoint.resolve_device(model.device)
    processor, net = checkpoint.load(source, device, checkpoint.resolve_dtype(model.dtype, device, source))
    acc, answers = golden_answers(net, processor, golden_dir, ev)
    metrics = {
        "source": model.source,
        "golden_accuracy": acc.accuracy,
        "per_category": acc.per_category,
        "golden_rows": acc.n,
        "parameters": checkpoint.count_parameters(net),
        "weights_bytes": weights_bytes(source),
    }
    return metrics, answers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.base_model", description=__doc__)
    parser.add_argument("--golden", type=Path, required=True, help="golden set folder")
    parser.add_argument("--answers", type=Path, required=True, help="per-question answers JSONL to write")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    args = parser.parse_args(argv)

    def body() -> str:
        metrics, answers = evaluate_base_model(
            load_group("model", ModelParams), load_group("eval", EvalParams), args.golden
        )
        write_answers(args.answers, answers)
        write_json(args.metrics, metrics)
        return (
            f"{metrics['source']}: golden accuracy {metrics['golden_accuracy']:.1%} on {metrics['golden_rows']} rows, "
            f"{metrics['parameters']:,} parameters, {metrics['weights_bytes']:,} weight bytes -> {args.answers}"
        )

    return run_stage("base_model", body)


if __name__ == "__main__":
    raise SystemExit(main())
