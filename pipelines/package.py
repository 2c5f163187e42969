"""DVC stage ``package``: turn a checkpoint into one version of a Triton model repository.

Writes ``<repository>/<model>/<version>/`` (``model.py`` plus the checkpoint's weights, processor and
tokenizer), the model's generated ``config.pbtxt`` and its warmup request, and a metrics file. The
version folder is built under a temporary name and renamed into place last, so a failed run never
leaves a half version that Triton could load; other versions are not touched.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import shutil
import struct
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from pipelines.checkpoint import missing_parts
from pipelines.errors import StageError, run_stage
from pipelines.files import atomic_dir, write_bytes, write_json
from pipelines.params import load_group
from pipelines.pbtxt import WARMUP_DIR, WARMUP_MESSAGES_FILE, ServingParams, render_config
from pipelines.tiny_model import shapes

logger = logging.getLogger(__name__)

#: The params.yaml group this stage reads.
PARAMS_GROUP = "package"
#: Name the Python backend looks for in each version folder.
BACKEND_FILE = "model.py"
# Any image of the task will do for warmup; a seed of its own keeps it apart from training data.
_WARMUP_SEED = 99


class PackageParams(ServingParams):
    """The ``package`` group of params.yaml."""

    model_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    version: PositiveInt


class PackageResult(BaseModel):
    """What ``metrics/package.json`` records."""

    model_config = ConfigDict(frozen=True)

    model: str
    version: int
    bytes: int
    files: int


def load_params(path: Path) -> PackageParams:
    """The ``package`` group of ``path``; errors name the offending key."""
    return load_group(PARAMS_GROUP, PackageParams, path)


def package(checkpoint: Path, backend: Path, repository: Path, params: PackageParams) -> PackageResult:
    """Write version ``params.version`` of ``params.model_name`` into ``repository``."""
    if parts := missing_parts(checkpoint):
        raise StageError(
            f"package input {checkpoint} is not a Qwen3-VL checkpoint: missing {'; '.join(parts)}; "
            "run the quantize stage first"
        )
    if not backend.is_file():
        raise StageError(f"backend {backend} does not exist; pass the path of serving/backend/model.py")
    model_dir = repository / params.model_name
    config = render_config(params.model_name, params).encode()
    warmup = warmup_messages()
    # atomic_dir stages under a dot-prefixed name, which Triton never mistakes for a version.
    with atomic_dir(model_dir / str(params.version)) as staging:
        shutil.copytree(checkpoint, staging, ignore=shutil.ignore_patterns(".*", "__pycache__"), dirs_exist_ok=True)
        shutil.copy2(backend, staging / BACKEND_FILE)
        _make_readable(staging)
        files = [path for path in staging.rglob("*") if path.is_file()]
        result = PackageResult(
            model=params.model_name,
            version=params.version,
            bytes=sum(path.stat().st_size for path in files),
            files=len(files),
        )
        write_bytes(model_dir / WARMUP_DIR / WARMUP_MESSAGES_FILE, warmup)
        write_bytes(model_dir / "config.pbtxt", config)
    logger.info("packaged %s version %d: %d files, %d bytes", result.model, result.version, result.files, result.bytes)
    return result


def warmup_messages() -> bytes:
    """One conversation (a real image and question) as a serialized Triton BYTES element."""
    sample = shapes.sample(_WARMUP_SEED, 0)
    png = io.BytesIO()
    sample.image.save(png, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode("ascii")
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": sample.question}]
    document = json.dumps([{"role": "user", "content": content}]).encode()
    # Triton's warmup files hold BYTES elements as a 4-byte little-endian length, then the bytes.
    return struct.pack("<I", len(document)) + document


def _make_readable(folder: Path) -> None:
    # Checkpoints are often saved 0600/0700; Triton in NVIDIA's container may run as another user.
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else path.stat().st_mode | 0o444)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m pipelines.package --checkpoint DIR --backend FILE --repository DIR --metrics FILE``."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.package", description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder to package")
    parser.add_argument("--backend", type=Path, required=True, help="the Python-backend model.py to ship")
    parser.add_argument("--repository", type=Path, required=True, help="Triton model repository root")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    args = parser.parse_args(argv)

    def body() -> str:
        result = package(args.checkpoint, args.backend, args.repository, load_params(args.params))
        write_json(args.metrics, result.model_dump())
        folder = args.repository / result.model / str(result.version)
        return f"{result.model} version {result.version}: {result.files} files, {result.bytes:,} bytes -> {folder}"

    return run_stage("package", body)


if __name__ == "__main__":
    raise SystemExit(main())
