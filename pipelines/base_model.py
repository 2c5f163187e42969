"""`base_model` stage: resolve ``model.source`` to a checkpoint and record its golden accuracy."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from pipelines import checkpoint
from pipelines.errors import StageError, run_stage
from pipelines.files import atomic_dir, weights_bytes, write_json
from pipelines.golden import golden_accuracy
from pipelines.params import EvalParams, ModelParams, load_group
from pipelines.tiny_model import BUILTIN_SOURCE, CHECKPOINT_DIR

log = logging.getLogger(__name__)


def resolve_source(source: str) -> Path:
    """The checkpoint folder that ``model.source`` names; fails with the path and what is missing."""
    if source == BUILTIN_SOURCE:
        folder = CHECKPOINT_DIR
    elif source.startswith("builtin:"):
        raise StageError(f"model.source {source!r}: unknown builtin model (the only one is {BUILTIN_SOURCE!r})")
    else:
        folder = Path(source).expanduser()
    checkpoint.require_checkpoint(folder, "model.source")
    return folder


def prepare_base_model(model: ModelParams, ev: EvalParams, golden_dir: Path, out: Path) -> dict[str, Any]:
    """Copy the source checkpoint to ``out`` and evaluate it in-process on the golden set."""
    source = resolve_source(model.source)
    with atomic_dir(out) as tmp:
        checkpoint.copy_checkpoint(source, tmp)
    device = checkpoint.resolve_device(model.device)
    processor, net = checkpoint.load(out, device)
    acc = golden_accuracy(net, processor, golden_dir, ev)
    return {
        "source": model.source,
        "device": device,
        "golden_accuracy": acc.accuracy,
        "per_category": acc.per_category,
        "golden_rows": acc.n,
        "parameters": checkpoint.count_parameters(net),
        "weights_bytes": weights_bytes(out),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.base_model", description=__doc__)
    parser.add_argument("--golden", type=Path, required=True, help="golden set folder")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    args = parser.parse_args(argv)

    def body() -> str:
        metrics = prepare_base_model(
            load_group("model", ModelParams), load_group("eval", EvalParams), args.golden, args.out
        )
        write_json(args.metrics, metrics)
        return (
            f"{metrics['source']}: golden accuracy {metrics['golden_accuracy']:.1%} on {metrics['golden_rows']} rows, "
            f"{metrics['parameters']:,} parameters, {metrics['weights_bytes']:,} weight bytes -> {args.out}"
        )

    return run_stage("base_model", body)


if __name__ == "__main__":
    raise SystemExit(main())
