"""Model-level rules: name, backend and platform, batch size, versions, Python files.

Messages quote Triton 2.51's own load errors (core ``src/model_config_utils.cc``
``ValidateModelConfig``, ``model_lifecycle.cc`` ``VersionsToLoad``,
``model_repository_manager.cc``) so a finding reads like the failure it predicts.
"""

from __future__ import annotations

import ast
import posixpath
from collections.abc import Iterator
from pathlib import Path

from validation.context import (
    ENSEMBLE_PLATFORM,
    INT64_MAX,
    INT64_MIN,
    PYTHON_BACKEND,
    CheckContext,
    custom_backend_from_name,
    effective_backend,
    existing_versions,
    selected_versions,
    version_folder_number,
    version_folders,
)
from validation.findings import Finding, Severity
from validation.locate import Key
from validation.pbtxt import ParsedConfig

# GetBackendType / GetBackendTypeFromPlatform: only these backends are tied to a platform.
_PLATFORM_OF_TYPED_BACKEND = {
    "tensorrt": {"tensorrt_plan"},
    "onnxruntime": {"onnxruntime_onnx"},
    "tensorflow": {"tensorflow_graphdef", "tensorflow_savedmodel"},
    "pytorch": {"pytorch_libtorch"},
}
# Fields tritonclient's schema has and Triton 2.51's does not (parent fields, message, field), found by
# diffing model_config_pb2 against the descriptor embedded in the wheel's libtritonserver.so; 2.51
# cannot even parse a config that sets them.
_NEWER_THAN_SERVER: tuple[tuple[tuple[str, ...], str, str], ...] = (
    ((), "ModelConfig", "model_metrics"),
    (("ensemble_scheduling",), "ModelEnsembling", "max_inflight_requests"),
)
# Python-based backends (a model.py in the server's backend folder, run by the Python backend) among
# the standard container's: a config may name their runtime "model.py".
PYTHON_BASED_BACKENDS = frozenset({"vllm"})
_PYTHON_RUNTIME = "model.py"
_BACKEND_DIR = "<backends>"  # the server's --backend-directory, unknown offline
_EXEC_ENV = "EXECUTION_ENV_PATH"
_MODEL_DIR_VAR = "$$TRITON_MODEL_DIRECTORY"
# The Python backend names a version's folder by the version as an unsigned 64-bit number.
_UINT64 = 2**64


def check_model(pc: ParsedConfig, ctx: CheckContext) -> Iterator[Finding]:
    yield from _name(pc)
    yield from _schema_version(pc)
    yield from _backend(pc, ctx)
    cfg = pc.config
    if cfg.max_batch_size < 0:
        yield pc.finding(
            "max-batch-size", f"'max_batch_size' must be non-negative value for {pc.name}", "max_batch_size"
        )
    yield from _versions(pc)
    if cfg.model_transaction_policy.decoupled and cfg.response_cache.enable:
        yield pc.finding(
            "response-cache",
            f"Response Cache does not currently support model {pc.name} with 'decoupled' transaction "
            "policy. Please disable the response cache.",
            "response_cache",
        )
    if effective_backend(pc)[0] == PYTHON_BACKEND:
        yield from _python_files(pc)
        yield from _decoupled_python(pc)


def _name(pc: ParsedConfig) -> Iterator[Finding]:
    folder = pc.model_dir.name
    if pc.config.name and pc.config.name != folder:
        yield pc.finding(
            "name-folder",
            f"unexpected directory name '{folder}' for model '{pc.config.name}', directory name must equal model name",
            "name",
        )


def _schema_version(pc: ParsedConfig) -> Iterator[Finding]:
    for parents, message, name in _NEWER_THAN_SERVER:
        holder = pc.config
        for parent in parents:
            holder = getattr(holder, parent)
        if name in {descriptor.name for descriptor, _ in holder.ListFields()}:
            yield pc.finding(
                "schema-newer-than-server",
                f'Triton 2.51 fails to read text proto: Message type "inference.{message}" has no field named '
                f'"{name}" (the field is newer than that server)',
                *parents,
                name,
            )


def _backend(pc: ParsedConfig, ctx: CheckContext) -> Iterator[Finding]:
    cfg = pc.config
    if cfg.platform == ENSEMBLE_PLATFORM:
        if cfg.backend:
            yield pc.finding(
                "backend-platform",
                f"Ensemble model '{pc.name}' must have platform type 'ensemble' and empty backend type",
                "backend",
            )
        return
    backend, platform = effective_backend(pc)
    if not backend:
        custom = custom_backend_from_name(pc)
        if custom is None and not (cfg.platform or cfg.default_model_filename):
            yield pc.finding(
                "backend-missing",
                f"Invalid model name: Could not determine backend for model '{pc.name}' with no backend in "
                "model configuration. Expected model name of the form 'model.<backend_name>'.",
                "name",
            )
            return
        if custom is None:
            yield pc.finding("backend-missing", f"unexpected platform type '{platform}' for {pc.name}", "platform")
            return
        backend = custom
    typed = _PLATFORM_OF_TYPED_BACKEND.get(backend)
    if typed is not None and platform not in typed:
        yield pc.finding(
            "backend-platform", f"unexpected 'platform' and 'backend' pair, got:{platform}, {backend}", "platform"
        )
    if backend not in ctx.target.backends and not cfg.runtime:
        yield pc.finding(
            "backend-unknown",
            f"unable to find backend library for backend '{backend}', try specifying runtime on the model "
            f"configuration. (known here: {', '.join(sorted(ctx.target.backends))})",
            "backend",
        )
    if cfg.runtime:
        yield from _runtime(pc, backend, backend in ctx.target.backends)


def _runtime(pc: ParsedConfig, backend: str, installed: bool) -> Iterator[Finding]:
    """``runtime``: the library Triton loads for the model (backend_model.cc ``GetBackendLibraryProperties``).

    Triton looks for it in the version folder, the model folder, then ``<backends>/<backend>``, and
    refuses a path that leaves the folder it was found in: a ``runtime`` is a way to make the server
    load a shared library, so one that climbs out (``../``) is refused here whether or not the file
    exists, and one the named backend's folder does not hold (the checker knows each backend's own
    library, ``libtriton_<backend>.so``) is refused unless the model's own folders hold it.
    """
    runtime = pc.config.runtime
    if runtime == _PYTHON_RUNTIME:
        if backend not in PYTHON_BASED_BACKENDS or not installed:
            why = "is not Python-based" if installed else "is not on the target server"
            yield pc.finding(
                "runtime",
                f"unable to find Python backend based backend library '{_PYTHON_RUNTIME}' for model '{pc.name}', "
                f"searched: '{_BACKEND_DIR}/{backend}/{_PYTHON_RUNTIME}' (the {backend} backend {why})",
                "runtime",
            )
        return
    versions = selected_versions(pc) or [1]
    for version in versions:
        # Triton joins the strings ("<folder>/<runtime>"), so an absolute runtime is not absolute there.
        for folder in (pc.model_dir / str(version), pc.model_dir):
            found = Path(f"{folder}/{runtime}")
            if not found.exists():
                continue
            if not found.resolve().is_relative_to(folder.resolve()):
                yield _escapes(pc, runtime, str(folder))
            break
        else:
            yield from _backend_library(pc, backend, installed, runtime, version)


def _backend_library(pc: ParsedConfig, backend: str, installed: bool, runtime: str, version: int) -> Iterator[Finding]:
    """``runtime`` is not in the model's folders: it must be the backend's own library in the server's folder."""
    folder = f"{_BACKEND_DIR}/{backend}"
    resolved = posixpath.normpath(f"{folder}/{runtime}")
    if not resolved.startswith(folder + "/"):
        yield _escapes(pc, runtime, folder)
        return
    if resolved == f"{folder}/libtriton_{backend}.so" and installed:
        return
    why = (
        f"the {backend} backend's own library is libtriton_{backend}.so"
        if installed
        else f"the target server has no {backend} backend"
    )
    yield pc.finding(
        "runtime",
        f"unable to find backend library '{runtime}' for model '{pc.name}', searched: "
        f"'{pc.model_dir / str(version)}' '{pc.model_dir}' '{folder}' ({why})",
        "runtime",
    )


def _escapes(pc: ParsedConfig, runtime: str, folder: str) -> Finding:
    return pc.finding(
        "runtime",
        f"backend library name '{runtime}' escapes backend directory '{folder}', for model '{pc.name}', "
        "check model config runtime field",
        "runtime",
    )


def _versions(pc: ParsedConfig) -> Iterator[Finding]:
    yield from _version_folders(pc)
    existing = existing_versions(pc.model_dir)
    policy = pc.config.version_policy
    for i, version in enumerate(policy.specific.versions):
        if version not in existing:
            yield pc.finding(
                "version-policy",
                f"version {version} is specified for model '{pc.name}', but the version directory is not present",
                "version_policy",
                "specific",
                "versions",
                i,
                severity=Severity.WARNING,
            )
    if not selected_versions(pc):
        yield pc.finding(
            "version-policy",
            f"at least one version must be available under the version policy of model '{pc.name}'",
            "version_policy",
        )


def _version_folders(pc: ParsedConfig) -> Iterator[Finding]:
    """VersionsToLoad's complaints about folder names: two it logs and skips, one that kills the server."""
    for name in version_folders(pc.model_dir):
        number = version_folder_number(name)
        if len(name) > 1 and name.startswith("0"):
            message = f"ignore version directory '{name}' which contains leading zeros in its directory name"
        elif number is None:
            message = f"ignore version directory '{name}' which fails to convert to integral number"
        elif not INT64_MIN <= number <= INT64_MAX:
            yield pc.finding(
                "version-folder",
                f"version directory '{name}' is out of range for a 64-bit version number: Triton 2.51's std::stoll "
                "throws std::out_of_range there, which it does not catch, and the server aborts",
                "version_policy",
            )
            continue
        else:
            continue
        yield pc.finding("version-folder", message, "version_policy", severity=Severity.WARNING)


def _python_files(pc: ParsedConfig) -> Iterator[Finding]:
    filename = pc.config.default_model_filename or "model.py"
    for version in selected_versions(pc):
        # Triton builds the path from the number, so folder "1abc" still means "<model>/1/" (and "-4",
        # as an unsigned number, "<model>/18446744073709551612/").
        path = pc.model_dir / str(version % _UINT64) / filename
        if not path.is_file():
            yield pc.finding(
                "python-model-file",
                f"Python model file not found in '{path}' (Triton 2.51 then hangs loading the model)",
                "default_model_filename" if pc.config.default_model_filename else "backend",
            )
    if _EXEC_ENV in pc.config.parameters:
        raw = pc.config.parameters[_EXEC_ENV].string_value
        resolved = str(pc.model_dir) + raw[len(_MODEL_DIR_VAR) :] if raw.startswith(_MODEL_DIR_VAR) else raw
        if not Path(resolved).exists():
            yield pc.finding(
                "python-execution-env",
                f"Failed to get the canonical path for {resolved}.",
                "parameters",
                Key(_EXEC_ENV),
            )


def _decoupled_python(pc: ParsedConfig) -> Iterator[Finding]:
    """A decoupled config over a model.py that never takes a response sender: it must answer through one.

    Its ``execute`` returns the responses instead, which the backend refuses for every request; with a
    warmup Triton 2.51 refuses the load, or dies of signal 11 while loading it (both seen here).
    """
    if not pc.config.model_transaction_policy.decoupled:
        return
    filename = pc.config.default_model_filename or "model.py"
    for version in selected_versions(pc):
        path = pc.model_dir / str(version % _UINT64) / filename
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a missing file is python-model-file's; one that does not parse fails at load in Python's words
        if not any(isinstance(node, ast.Attribute) and node.attr == "get_response_sender" for node in ast.walk(tree)):
            yield pc.finding(
                "python-decoupled",
                f"Python model '{pc.name}_0' is using the decoupled mode and the execute function must return "
                f"None: {path} never calls request.get_response_sender() (with a warmup, Triton 2.51 fails or "
                "crashes loading it)",
                "model_transaction_policy",
            )
