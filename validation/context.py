"""What the rules know beyond one config: the target server, sibling models, and Triton's defaults.

Triton fills in some fields before it validates (backend from platform or files, versions from the
version policy); these helpers mirror that so the rules judge the config Triton actually judges.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from validation.findings import Finding
from validation.pbtxt import ParsedConfig

# The backends an NGC tritonserver container ships; --backends narrows it to a specific server.
STANDARD_BACKENDS = frozenset(
    {"python", "onnxruntime", "tensorrt", "pytorch", "tensorflow", "openvino", "fil", "dali", "identity",
     "repeat", "square", "vllm", "tensorrtllm"}
)  # fmt: skip
ENSEMBLE_PLATFORM = "ensemble"
PYTHON_BACKEND = "python"

# core src/model_config_utils.cc AutoCompleteBackendFields: platform and file names imply a backend.
_PLATFORM_BACKEND = {
    "tensorflow_graphdef": "tensorflow",
    "tensorflow_savedmodel": "tensorflow",
    "tensorrt_plan": "tensorrt",
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
}
_FILE_BACKEND = {
    "model.savedmodel": "tensorflow",
    "model.graphdef": "tensorflow",
    "model.plan": "tensorrt",
    "model.onnx": "onnxruntime",
    "model.xml": "openvino",
    "model.pt": "pytorch",
    "model.py": "python",
}
_BACKEND_PLATFORM = {"tensorrt": "tensorrt_plan", "onnxruntime": "onnxruntime_onnx", "pytorch": "pytorch_libtorch"}
# Triton's std::stoll takes the leading integer of a folder name ("1abc" is version 1).
# ASCII only, as C's isspace and isdigit read them (Python's \s and \d take "²" and "٣" too).
_LEADING_INT = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")
# model_lifecycle.cc VersionsToLoad skips these folders (2.51 logs no warning for "configs": it skips it too).
SKIPPED_VERSION_DIRS = frozenset({"warmup", "initial_state", "configs"})
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True, slots=True)
class Target:
    """The server the configs are meant for: its backends, and its GPU count when known."""

    backends: frozenset[str] = STANDARD_BACKENDS
    gpus: int | None = None


class ModelLookup(Protocol):
    """Sibling models of the same repository, by folder name (how Triton resolves ensemble steps)."""

    def get(self, name: str) -> ParsedConfig | None: ...


@dataclass(frozen=True, slots=True)
class CheckContext:
    """The target, the sibling models, and every model's findings (computed once per run)."""

    target: Target
    models: ModelLookup
    # An ensemble fails by its steps' failures: the rules ask for a step model's findings here.
    findings_of: Callable[[ParsedConfig], Sequence[Finding]]


def enum_name(enum: EnumTypeWrapper, value: int) -> str:
    """The value's name, or "" for a number the enum lacks (protobuf's C++ ``_Name`` answer Triton prints)."""
    try:
        return str(enum.Name(value))
    except ValueError:
        return ""


def effective_backend(pc: ParsedConfig) -> tuple[str, str]:
    """(backend, platform) after Triton's auto-fill; backend "" when Triton cannot tell."""
    cfg = pc.config
    backend, platform, filename = cfg.backend, cfg.platform, cfg.default_model_filename
    if not backend:
        backend = _PLATFORM_BACKEND.get(platform, "") or _FILE_BACKEND.get(filename, "")
    if not backend and not platform and not filename:
        contents = _first_version_contents(pc.model_dir)
        backend = next((b for name, b in _FILE_BACKEND.items() if name in contents), "")
    if not platform:
        platform = _BACKEND_PLATFORM.get(backend, "")
    return backend, platform


def custom_backend_from_name(pc: ParsedConfig) -> str | None:
    """Triton's last resort when nothing names a backend: ``model.<backend>`` folder names."""
    cfg = pc.config
    if cfg.backend or cfg.platform or cfg.default_model_filename:
        return None
    _, dot, suffix = pc.name.partition(".")
    return suffix if dot else None


def _first_version_contents(model_dir: Path) -> set[str]:
    # Triton inspects only the first subfolder in byte order, whatever its name.
    subdirs = sorted(p.name for p in _subdirs(model_dir))
    if not subdirs:
        return set()
    return {p.name for p in (model_dir / subdirs[0]).iterdir()}


def _subdirs(path: Path) -> Iterator[Path]:
    try:
        yield from (p for p in path.iterdir() if p.is_dir())
    except OSError:
        return


def version_folder_number(name: str) -> int | None:
    """std::stoll's reading of a version folder name: its leading integer, or None when it has none."""
    match = _LEADING_INT.match(name)
    return int(match.group(1)) if match else None


def version_folders(model_dir: Path) -> list[str]:
    """The subfolders ``VersionsToLoad`` considers (sorted by name), before it reads their numbers."""
    return sorted(p.name for p in _subdirs(model_dir) if p.name not in SKIPPED_VERSION_DIRS)


def existing_versions(model_dir: Path) -> dict[int, str]:
    """Version number to folder name, read the way core ``VersionsToLoad`` reads them."""
    versions: dict[int, str] = {}
    for name in version_folders(model_dir):
        number = version_folder_number(name)
        if (len(name) > 1 and name.startswith("0")) or number is None or not INT64_MIN <= number <= INT64_MAX:
            continue
        versions.setdefault(number, name)
    return versions


def selected_versions(pc: ParsedConfig) -> list[int]:
    """The versions Triton loads under the config's version policy (default: latest 1)."""
    existing = sorted(existing_versions(pc.model_dir), reverse=True)
    policy = pc.config.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "specific":
        return sorted({v for v in policy.specific.versions if v in existing})
    if choice == "all":
        return sorted(existing)
    latest = policy.latest.num_versions if choice == "latest" else 1
    return sorted(existing[:latest])
