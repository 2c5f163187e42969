"""Shared fixtures for the serving tests: tiny checkpoints, package params, a model repository."""

from __future__ import annotations

import base64
import io
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core.contract import PackageParams
from serving.triton.packaging import package

BACKEND = Path(__file__).resolve().parents[2] / "serving" / "backend" / "model.py"
#: The base model name the serving tests package under (Triton models ``qwen3-vl-v<N>``).
MODEL = "qwen3-vl"
#: Golden questions come from a stream the tiny model never trained on (seed 0 is training).
GOLDEN_SEED = 7


def serving_params(**overrides: Any) -> PackageParams:
    """Package params for tests: small, fast, every field explicit (params.yaml has no say here)."""
    values: dict[str, Any] = {
        "version": 1,
        "max_batch_size": 8,
        "dynamic_batching": True,
        "preferred_batch_sizes": [4, 8],
        "max_queue_delay_us": 5000,
        "max_queue_size": 64,
        "queue_timeout_us": 30_000_000,
        "instance_count": 1,
        "instance_kind": "cpu",
        "compute_dtype": "auto",
        "max_new_tokens": 8,
        "temperature": 0.0,
        "top_p": 1.0,
        "max_history": 2,
        "max_images": 4,
        "max_image_pixels": 1 << 20,
        "max_prompt_tokens": 4096,
    }
    values.update(overrides)
    return PackageParams.model_validate(values)


@pytest.fixture(scope="session")
def int8_checkpoint(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_checkpoint`` through the quantize stage's own code: bitsandbytes int8, vision tower and head kept."""
    from core.quantization import QuantizeParams, quantize_checkpoint

    folder = tmp_path_factory.mktemp("quantized") / "bnb-int8"
    params = QuantizeParams(method="bnb-int8", skip_modules=["model.visual", "lm_head"])
    quantize_checkpoint(tiny_checkpoint, folder, params, "cpu")
    return folder


@pytest.fixture()
def fake_checkpoint(tmp_path: Path) -> Path:
    """A folder with the files a checkpoint needs, without real weights (the package stage never loads them)."""
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "qwen3_vl"}')
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json"):
        (folder / name).write_text("{}")
    (folder / "model.safetensors").write_bytes(os.urandom(1024))
    return folder


def png_bytes(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


Packager = Callable[..., Path]


@pytest.fixture(scope="session")
def packager() -> Packager:
    """``packager(checkpoint, repository, model=..., **params)`` packages one build; returns its version folder."""

    def run(checkpoint: Path, repository: Path, model: str = MODEL, **overrides: Any) -> Path:
        params = serving_params(**overrides)
        result = package(checkpoint, BACKEND, repository, model, params)
        return repository / result.triton_model / str(params.version)

    return run


def png_declaring(width: int, height: int) -> bytes:
    """A small PNG whose header declares ``width`` x ``height`` pixels (its data ends long before that)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" + b"\x00" * 3 * width)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def data_url(data: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(data).decode()}"
