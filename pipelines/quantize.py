"""`quantize` stage: bitsandbytes int8/nf4 (or a plain copy), saved, reloaded and re-evaluated.

bitsandbytes on the CPU changes a 4-bit model's quant state once it has run a forward pass, and a
checkpoint saved after that reloads with lower accuracy. So the order here is fixed: quantize,
save, then evaluate a fresh reload of what was saved; the in-memory model never runs.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from core import checkpoint
from core.files import weights_bytes, write_json
from core.golden import golden_accuracy
from core.params import EvalParams, ModelParams, load_group
from core.quantization import QuantizeParams, quantize_checkpoint
from core.stage import run_stage

log = logging.getLogger(__name__)


def run_quantize(
    out: Path, golden_dir: Path, params: QuantizeParams, model: ModelParams, ev: EvalParams
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Quantize ``model.source``, then evaluate a fresh reload of the saved output.

    Returns the stage's metrics (the same on every machine) and its report (timings).
    """
    source = checkpoint.resolve_source(model.source)
    device = checkpoint.resolve_device(model.device)
    dtype = checkpoint.resolve_dtype(model.dtype, device, source)
    start = time.monotonic()
    quantize_checkpoint(source, out, params, device, dtype)
    seconds = time.monotonic() - start
    processor, reloaded = checkpoint.load(out, device, dtype)
    acc = golden_accuracy(reloaded, processor, golden_dir, ev)
    quantized, original = weights_bytes(out), weights_bytes(source)
    metrics = {
        "method": params.method,
        "skip_modules": params.skip_modules,
        "dtype": dtype,
        "weights_bytes": quantized,
        "source_weights_bytes": original,
        "size_ratio": round(quantized / original, 4),
        "golden_accuracy": acc.accuracy,
        "per_category": acc.per_category,
    }
    return metrics, {"device": device, "seconds": round(seconds, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.quantize", description=__doc__)
    parser.add_argument("--golden", type=Path, required=True, help="golden set folder")
    parser.add_argument("--out", type=Path, required=True, help="quantized checkpoint folder to write")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    parser.add_argument("--report", type=Path, required=True, help="machine-dependent figures (timings), untracked")
    args = parser.parse_args(argv)

    def body() -> str:
        metrics, report = run_quantize(
            args.out,
            args.golden,
            load_group("quantize", QuantizeParams),
            load_group("model", ModelParams),
            load_group("eval", EvalParams),
        )
        write_json(args.metrics, metrics)
        write_json(args.report, report)
        return (
            f"{metrics['method']}: {metrics['weights_bytes']:,} weight bytes "
            f"({metrics['size_ratio']:.0%} of the source) in {report['seconds']:.1f} s, "
            f"reloaded golden accuracy {metrics['golden_accuracy']:.1%} -> {args.out}"
        )

    return run_stage("quantize", body)


if __name__ == "__main__":
    raise SystemExit(main())
