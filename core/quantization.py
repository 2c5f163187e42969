"""bitsandbytes int8/nf4 quantization of a Qwen3-VL checkpoint (or a plain copy), saved without running it.

bitsandbytes on the CPU changes a 4-bit model's quant state once it has run a forward pass, and a
checkpoint saved after that reloads with lower accuracy. So ``quantize_checkpoint`` loads, quantizes
and saves, and the in-memory model never runs; callers evaluate a fresh reload of what was saved.

The saved files must not depend on the machine or the shell: transformers writes the tokenizer's
load-time ``local_files_only`` into ``tokenizer_config.json``, and it is true only where
``HF_HUB_OFFLINE`` is set, so the same build differed by one byte between a ``make`` run and a
plain ``dvc repro``. The source is always a local folder, so it is loaded with the hub off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from core import checkpoint
from core.files import atomic_dir
from core.params import ParamsGroup
from core.stage import StageError

QUANTIZE_METHODS: tuple[str, ...] = ("none", "bnb-int8", "bnb-nf4")


class QuantizeParams(ParamsGroup):
    method: str
    skip_modules: list[str] = Field(default_factory=list)

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        if method not in QUANTIZE_METHODS:
            raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(QUANTIZE_METHODS)}")
        return method


def quantization_config(method: str, skip_modules: list[str], dtype: str) -> Any:
    """The ``BitsAndBytesConfig`` for ``method`` (None for ``none``); 4-bit computes in ``dtype``."""
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
            bnb_4bit_compute_dtype=getattr(torch, dtype),
            llm_int8_skip_modules=skip_modules,
        )
    raise StageError(f"quantize.method {method!r}: unknown; valid methods: {', '.join(QUANTIZE_METHODS)}")


def quantize_checkpoint(source: Path, out: Path, params: QuantizeParams, device: str, dtype: str = "float32") -> None:
    """Write the quantized checkpoint (weights, processor, tokenizer) to ``out`` atomically."""
    checkpoint.require_checkpoint(source, "quantize input")
    config = quantization_config(params.method, params.skip_modules, dtype)
    with atomic_dir(out) as tmp:
        if config is None:
            checkpoint.copy_checkpoint(source, tmp)
            return
        # No forward pass between loading and saving: see the module docstring.
        _, model = checkpoint.load(source, device, dtype, quantization_config=config)
        model.save_pretrained(tmp)
        _local_processor(source).save_pretrained(tmp)


def _local_processor(source: Path) -> Any:
    """The processor of a local checkpoint, loaded as it is offline (see the module docstring)."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(source, local_files_only=True)
