"""Qwen3-VL checkpoints: recognise one, copy one, load one onto the right device."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from core.stage import StageError

QWEN3_VL_MODEL_TYPES = ("qwen3_vl", "qwen3_vl_moe")
# Files (any one of each group) that make a folder a loadable Qwen3-VL checkpoint.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "config": ("config.json",),
    "weights": ("*.safetensors", "*.bin"),
    "tokenizer": ("tokenizer.json", "vocab.json"),
    "image processor": ("preprocessor_config.json", "processor_config.json"),
}


def missing_parts(folder: Path) -> list[str]:
    """What ``folder`` lacks to be a Qwen3-VL checkpoint (empty when it is one)."""
    if not folder.is_dir():
        return [f"the folder itself ({folder} does not exist or is not a directory)"]
    missing = [
        f"{part} ({' or '.join(globs)})"
        for part, globs in _REQUIRED.items()
        if not any(any(folder.glob(g)) for g in globs)
    ]
    config = folder / "config.json"
    if config.is_file():
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except json.JSONDecodeError as exc:
            return [*missing, f"a readable config.json ({exc.msg} at line {exc.lineno})"]
        if model_type not in QWEN3_VL_MODEL_TYPES:
            missing.append(
                f"a Qwen3-VL config (config.json has model_type {model_type!r}, want one of {QWEN3_VL_MODEL_TYPES})"
            )
    return missing


def require_checkpoint(folder: Path, what: str) -> None:
    """Raise ``StageError`` naming the folder and every missing part."""
    if parts := missing_parts(folder):
        raise StageError(f"{what} {folder} is not a Qwen3-VL checkpoint: missing {'; '.join(parts)}")


def resolve_source(source: str) -> Path:
    """The checkpoint folder ``model.source`` names; fails with the path and what is missing."""
    folder = Path(source).expanduser()
    require_checkpoint(folder, "model.source")
    return folder


def copy_checkpoint(src: Path, dst: Path) -> None:
    """Copy a checkpoint's files (not hidden or cache folders) into ``dst``.

    Real copies, never hard links: DVC caches and write-protects outputs, and a link would carry
    that onto (or a later write into) the user's own checkpoint.
    """
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".*", "__pycache__"), dirs_exist_ok=True)


def resolve_device(device: str) -> str:
    """``auto`` picks CUDA when a GPU is visible, else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise StageError("model.device: cuda was asked for but no CUDA device is visible (use auto or cpu)")
    return device


#: Below this many weight bytes a checkpoint computes in float32 on the CPU (the tiny model); above
#: it, bfloat16, so a real 8B checkpoint never needs 32 GB of float32 weights in memory.
SMALL_CHECKPOINT_BYTES = 2 * 1024**3


def resolve_dtype(dtype: str, device: str, folder: Path) -> str:
    """``auto``: bfloat16 on CUDA; on the CPU float32 for small checkpoints, bfloat16 otherwise."""
    if dtype != "auto":
        return dtype
    if device == "cuda":
        return "bfloat16"
    size = sum(p.stat().st_size for pattern in ("*.safetensors", "*.bin") for p in folder.glob(pattern))
    return "float32" if size < SMALL_CHECKPOINT_BYTES else "bfloat16"


def load(folder: Path, device: str, dtype: str = "float32", **kwargs: Any) -> tuple[Any, Any]:
    """Processor and model from ``folder`` (bitsandbytes-quantized if its config says so), in eval mode."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(
        folder, dtype=getattr(torch, dtype), device_map={"": device}, **kwargs
    )
    model.eval()
    return processor, model


def count_parameters(model: Any) -> int:
    """Logical parameter count (a packed 4-bit tensor counts its unpacked elements)."""
    total = 0
    for p in model.parameters():
        shape = getattr(getattr(p, "quant_state", None), "shape", None)
        total += math.prod(int(d) for d in shape) if shape is not None else p.numel()
    return total
