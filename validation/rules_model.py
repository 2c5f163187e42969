"""Model-level rules: name, backend and platform, batch size, versions, instances, Python files.

Messages quote Triton 2.51's own load errors (core ``src/model_config_utils.cc``
``ValidateModelConfig`` / ``ValidateInstanceGroup``, ``model_lifecycle.cc`` ``VersionsToLoad``,
``model_repository_manager.cc``) so a finding reads like the failure it predicts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from validation.context import (
    ENSEMBLE_PLATFORM,
    PYTHON_BACKEND,
    CheckContext,
    custom_backend_from_name,
    effective_backend,
    existing_versions,
    selected_versions,
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
_EXEC_ENV = "EXECUTION_ENV_PATH"
_MODEL_DIR_VAR = "$$TRITON_MODEL_DIRECTORY"
_IG = mc.ModelInstanceGroup


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
    if not cfg.HasField("ensemble_scheduling"):
        yield from _instance_groups(pc, ctx)
    if cfg.model_transaction_policy.decoupled and cfg.response_cache.enable:
        yield pc.finding(
            "response-cache",
            f"Response Cache does not currently support model {pc.name} with 'decoupled' transaction "
            "policy. Please disable the response cache.",
            "response_cache",
        )
    if effective_backend(pc)[0] == PYTHON_BACKEND:
        yield from _python_files(pc)


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
    if backend not in ctx.target.backends:
        yield pc.finding(
            "backend-unknown",
            f"unable to find backend library for backend '{backend}', try specifying runtime on the model "
            f"configuration. (known here: {', '.join(sorted(ctx.target.backends))})",
            "backend",
        )


def _versions(pc: ParsedConfig) -> Iterator[Finding]:
    existing = existing_versions(pc.model_dir)
    for sub in sorted(p.name for p in pc.model_dir.iterdir() if p.is_dir()):
        if len(sub) > 1 and sub.startswith("0"):
            yield pc.finding(
                "version-folder",
                f"ignore version directory '{sub}' which contains leading zeros in its directory name",
                "version_policy",
                severity=Severity.WARNING,
            )
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


def _instance_groups(pc: ParsedConfig, ctx: CheckContext) -> Iterator[Finding]:
    gpus = ctx.target.gpus
    platform = effective_backend(pc)[1]
    for i, group in enumerate(pc.config.instance_group):
        label = f"instance group {group.name or f'{pc.name}_{i}'} of model {pc.name}"
        kind = group.kind
        if kind == _IG.KIND_AUTO and gpus is not None:
            # NormalizeInstanceGroup: AUTO becomes CPU when any listed GPU (or every GPU) is missing.
            all_present = gpus > 0 and all(0 <= g < gpus for g in group.gpus)
            kind = _IG.KIND_GPU if all_present else _IG.KIND_CPU
        if kind in (_IG.KIND_CPU, _IG.KIND_MODEL) and group.gpus:
            kind_name = _IG.Kind.Name(kind)
            yield pc.finding(
                "instance-group", f"{label} has kind {kind_name} but specifies one or more GPUs",
                "instance_group", i, "gpus",
            )  # fmt: skip
        if kind == _IG.KIND_GPU and gpus is not None:
            if not group.gpus and gpus == 0:
                yield pc.finding(
                    "instance-group",
                    f"{label} has kind KIND_GPU but no GPUs are available",
                    "instance_group",
                    i,
                    "kind",
                )
            for j, gid in enumerate(group.gpus):
                if not 0 <= gid < gpus:
                    yield pc.finding(
                        "instance-group",
                        f"{label} specifies invalid or unsupported gpu id {gid} (the target has {gpus} GPUs)",
                        "instance_group", i, "gpus", j,
                    )  # fmt: skip
        if group.profile and platform != "tensorrt_plan":
            yield pc.finding(
                "instance-group",
                # Triton's message runs "platform" into "specifies" when the platform is empty.
                f"{label} and platform{f' {platform}' if platform else ''} specifies profile field which is only "
                "supported for TensorRT models",
                "instance_group", i, "profile",
            )  # fmt: skip


def _python_files(pc: ParsedConfig) -> Iterator[Finding]:
    filename = pc.config.default_model_filename or "model.py"
    for version in selected_versions(pc):
        # Triton builds the path from the number, so folder "1abc" still means "<model>/1/".
        path = pc.model_dir / str(version) / filename
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
