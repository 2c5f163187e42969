"""`base_model` stage: check that ``model.source`` is a Qwen3-VL checkpoint and record its golden accuracy.

The checkpoint is read where it lies (DVC tracks ``model.source``); nothing is copied or linked,
so no later stage can write into a user's checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from core import checkpoint
from core.files import weights_bytes, write_json
from core.golden import golden_accuracy
from core.params import EvalParams, ModelParams, load_group
from core.stage import run_stage


def evaluate_base_model(model: ModelParams, ev: EvalParams, golden_dir: Path) -> dict[str, Any]:
    """Evaluate the source checkpoint in-process on the golden set; return the stage's metrics."""
    source = checkpoint.resolve_source(model.source)
    device = checkpoint.resolve_device(model.device)
    processor, net = checkpoint.load(source, device, checkpoint.resolve_dtype(model.dtype, device, source))
    acc = golden_accuracy(net, processor, golden_dir, ev)
    return {
        "source": model.source,
        "golden_accuracy": acc.accuracy,
        "per_category": acc.per_category,
        "golden_rows": acc.n,
        "parameters": checkpoint.count_parameters(net),
        "weights_bytes": weights_bytes(source),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.base_model", description=__doc__)
    parser.add_argument("--golden", type=Path, required=True, help="golden set folder")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    args = parser.parse_args(argv)

    def body() -> str:
        metrics = evaluate_base_model(load_group("model", ModelParams), load_group("eval", EvalParams), args.golden)
        write_json(args.metrics, metrics)
        return (
            f"{metrics['source']}: golden accuracy {metrics['golden_accuracy']:.1%} on {metrics['golden_rows']} rows, "
            f"{metrics['parameters']:,} parameters, {metrics['weights_bytes']:,} weight bytes"
        )

    return run_stage("base_model", body)


if __name__ == "__main__":
    raise SystemExit(main())
