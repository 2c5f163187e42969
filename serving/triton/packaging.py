"""Turn a checkpoint into one complete Triton model: ``<repository>/<model>-v<N>/``.

The model folder holds the generated ``config.pbtxt`` (serving exactly version ``N``), the warmup
request it refers to, and the version folder ``N/`` (``model.py`` plus the checkpoint's weights,
processor and tokenizer). Each build is its own Triton model with its own config, so two builds
with different serving settings can be served side by side. The whole folder is built under a
temporary name and swapped into place last: a failed run never leaves half a model that Triton
could load, and other builds are not touched.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import shutil
import struct
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from core.checkpoint import missing_parts
from core.contract import (
    CONFIG_FILE,
    MIN_BATCHING_INSTANCES,
    VLLM_ENGINE_ARGS_FILE,
    WARMUP_DIR,
    WARMUP_MESSAGES_FILE,
    Machine,
    PackageParams,
    render_config,
    render_engine_args,
    render_vllm_config,
    resolve_instance_count,
    vllm_engine_args,
)
from core.files import atomic_dir
from core.names import served_model_name
from core.stage import StageError
from tiny_model import shapes

logger = logging.getLogger(__name__)

#: Name the Python backend looks for in each version folder.
BACKEND_FILE = "model.py"
# Any image of the task will do for warmup; a seed of its own keeps it apart from training data.
_WARMUP_SEED = 99


class PackageResult(BaseModel):
    """What ``metrics/package.json`` records."""

    model_config = ConfigDict(frozen=True)

    model: str
    triton_model: str
    version: int
    bytes: int
    files: int
    # The instance group as rendered (an `auto` count resolved on the packaging machine).
    instance_count: int
    instance_kind: str


def package(checkpoint: Path, backend: Path, repository: Path, model: str, params: PackageParams) -> PackageResult:
    """Write ``<repository>/<model>-v<version>/`` for ``checkpoint``; return what was written.

    With ``params.engine`` ``vllm`` the folder is Triton's vLLM backend's instead (see ``package_vllm``).
    """
    if params.engine == "vllm":
        return package_vllm(repository, model, params)
    if parts := missing_parts(checkpoint):
        raise StageError(
            f"package input {checkpoint} is not a Qwen3-VL checkpoint: missing {'; '.join(parts)}; "
            "run the quantize stage first"
        )
    if not backend.is_file():
        raise StageError(f"backend {backend} does not exist; pass the path of serving/backend/model.py")
    name = served_model_name(model, params.version)
    params = _resolved(params, _weights_bytes(checkpoint))
    config = render_config(name, params.version, params)
    # atomic_dir stages under a dot-prefixed name, which Triton never mistakes for a model.
    with atomic_dir(repository / name) as staging:
        version_dir = staging / str(params.version)
        shutil.copytree(checkpoint, version_dir, ignore=shutil.ignore_patterns(".*", "__pycache__", "*.pyc"))
        shutil.copy2(backend, version_dir / BACKEND_FILE)
        (staging / WARMUP_DIR).mkdir()
        (staging / WARMUP_DIR / WARMUP_MESSAGES_FILE).write_bytes(warmup_messages())
        (staging / CONFIG_FILE).write_text(config)
        _make_readable(staging)
        files = [path for path in version_dir.rglob("*") if path.is_file()]
        result = PackageResult(
            model=model,
            triton_model=name,
            version=params.version,
            bytes=sum(path.stat().st_size for path in files),
            files=len(files),
            instance_count=params.instance_count,
            instance_kind=params.instance_kind,
        )
    logger.info(
        "packaged %s: %d files, %d bytes, %d %s instance(s)",
        name, result.files, result.bytes, result.instance_count, result.instance_kind,
    )  # fmt: skip
    return result


def package_vllm(repository: Path, model: str, params: PackageParams) -> PackageResult:
    """Write ``<repository>/<model>-v<version>/`` for Triton's vLLM backend: config.pbtxt + <version>/model.json.

    vLLM loads the checkpoint from ``package.vllm.model_path``, a path on the serving machines: the
    backend passes ``model.json`` to vLLM as is, and a version folder is renamed when it is served
    (``<model>-v<MLflow version>``), so a path inside it could not be written down here.
    """
    name = served_model_name(model, params.version)
    params = _resolved(params, 0)
    try:
        config = render_vllm_config(name, params.version, params)
        engine_args = render_engine_args(vllm_engine_args(params))
    except ValueError as exc:
        raise StageError(f"package: {exc}; see package.engine and package.vllm in params.yaml") from exc
    with atomic_dir(repository / name) as staging:
        version_dir = staging / str(params.version)
        version_dir.mkdir()
        (version_dir / VLLM_ENGINE_ARGS_FILE).write_text(engine_args)
        (staging / CONFIG_FILE).write_text(config)
        _make_readable(staging)
        files = [path for path in version_dir.rglob("*") if path.is_file()]
        result = PackageResult(
            model=model,
            triton_model=name,
            version=params.version,
            bytes=sum(path.stat().st_size for path in files),
            files=len(files),
            instance_count=params.instance_count,
            instance_kind=params.instance_kind,
        )
    logger.info(
        "packaged %s for the vLLM backend (weights at %s)", name, params.vllm.model_path if params.vllm else "-"
    )
    return result


def this_machine() -> Machine:
    """The cores and memory this process may use: CPU affinity and the cgroup's limits, where set."""
    cores = len(os.sched_getaffinity(0))
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cgroup = Path("/sys/fs/cgroup")
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            memory = min(memory, int(limit))
    except (OSError, ValueError):
        pass
    return Machine(cores=cores, memory_bytes=memory)


def _weights_bytes(checkpoint: Path) -> int:
    return sum(path.stat().st_size for path in checkpoint.glob("*.safetensors")) or sum(
        path.stat().st_size for path in checkpoint.glob("*.bin")
    )


def _resolved(params: PackageParams, weights_bytes: int) -> PackageParams:
    """``params`` with a number for ``instance_count`` (``auto`` derived from this machine)."""
    count = resolve_instance_count(
        params.instance_count, params.instance_kind, this_machine(), weights_bytes, params.engine
    )
    if params.dynamic_batching and params.engine == "transformers" and count < MIN_BATCHING_INSTANCES:
        logger.warning(
            "one %s instance with dynamic batching: Triton 2.51's batcher can stall a full 500 ms waiting for it "
            "(docs/performance.md); set package.instance_count to %d or auto",
            params.instance_kind, MIN_BATCHING_INSTANCES,
        )  # fmt: skip
    return params.model_copy(update={"instance_count": count})


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
        path.chmod(0o755 if path.is_dir() else (path.stat().st_mode | 0o444) & ~0o222 | 0o200)
