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

from pipelines import checkpoint
from pipelines.errors import StageError, run_stage
from pipelines.files import atomic_dir, weights_bytes, write_json
from pipelines.golden import golden_accuracy
from pipelines.params import QUANTIZE_METHODS, EvalParams, ModelParams, QuantizeParams, load_group

log = logging.getLogger(__name__)


def quantization_config(method: str, skip_modules: list[str], device: str) -> Any:
    """The ``BitsAndBytesConfig`` for ``method`` (None for ``none``)."""
    import torch
    from transformers import BitsAndBytesConfig

    if method == "none":
        return None
    if method == "bnb-int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip_modules)
    if method == "bnb-nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16 if device == "cuda" else torch.float32,
            llm_int8_skip_modules=skip_modules,
        )
    raise StageError(f"quantize.method {method!r}: unknown; valid methods: {', '.join(QUANTIZE_METHODS)}")


def quantize_checkpoint(source: Path, out: Path, params: QuantizeParams, device: str) -> None:
    """Write the quantized checkpoint (weights, processor, tokenizer) to ``out`` atomically."""
    checkpoint.require_checkpoint(source, "quantize input")
    config = quantization_config(params.method, params.skip_modules, device)
    with atomic_dir(out) as tmp:
        if config is None:
            checkpoint.copy_checkpoint(source, tmp)
            return
        # No forward pass between loading and saving: see the module docstring.
        processor, model = checkpoint.load(source, device, quantization_config=config)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)


def run_quantize(
    source: Path, out: Path, golden_dir: Path, params: QuantizeParams, model: ModelParams, ev: EvalParams
) -> dict[str, Any]:
    """Quantize, then evaluate a fresh reload of the saved output; return the stage's metrics."""
    device = checkpoint.resolve_device(model.device)
    start = time.monotonic()
    quantize_checkpoint(source, out, params, device)
    seconds = time.monotonic() - start
    processor, reloaded = checkpoint.load(out, device)
    acc = golden_accuracy(reloaded, processor, golden_dir, ev)
    quantized, original = weights_bytes(out), weights_bytes(source)
    return {
        "method": params.method,
        "skip_modules": params.skip_modules,
        "device": device,
        "weights_bytes": quantized,
        "source_weights_bytes": original,
        "size_ratio": round(quantized / original, 4),
        "seconds": round(seconds, 2),
        "golden_accuracy": acc.accuracy,
        "per_category": acc.per_category,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.quantize", description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="base checkpoint folder")
    parser.add_argument("--golden", type=Path, required=True, help="golden set folder")
    parser.add_argument("--out", type=Path, required=True, help="quantized checkpoint folder to write")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    args = parser.parse_args(argv)

    def body() -> str:
        metrics = run_quantize(
            args.model,
            args.out,
            args.golden,
            load_group("quantize", QuantizeParams),
            load_group("model", ModelParams),
            load_group("eval", EvalParams),
        )
        write_json(args.metrics, metrics)
        return (
            f"{metrics['method']}: {metrics['weights_bytes']:,} weight bytes "
            f"({metrics['size_ratio']:.0%} of the source) in {metrics['seconds']:.1f} s, "
            f"reloaded golden accuracy {metrics['golden_accuracy']:.1%} -> {args.out}"
        )

    return run_stage("quantize", body)


if __name__ == "__main__":
    raise SystemExit(main())
