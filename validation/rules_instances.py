"""Instance-group rules: kinds, GPU ids against the target, TensorRT profiles.

Messages quote core ``src/model_config_utils.cc`` ``ValidateInstanceGroup`` and ``GetProfileIndex``
as Triton 2.51 prints them, after ``NormalizeInstanceGroup`` has resolved ``KIND_AUTO``. GPU ids are
judged against ``--gpus`` only when it is given; a negative id is wrong on every machine.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from tritonclient.grpc import model_config_pb2 as mc

from validation.context import CheckContext, effective_backend
from validation.findings import Finding
from validation.pbtxt import ParsedConfig

_IG = mc.ModelInstanceGroup
_KNOWN_KINDS = frozenset({_IG.KIND_AUTO, _IG.KIND_GPU, _IG.KIND_CPU, _IG.KIND_MODEL})
_TRT = "tensorrt_plan"
# TRITON_MIN_COMPUTE_CAPABILITY of the stock 2.51 build, as its gpu-id message prints it.
MIN_COMPUTE_CAPABILITY = 6.0
# std::stoi: optional leading blanks and sign, then digits; the rest of the string is ignored.
_STOI = re.compile(r"\s*([+-]?\d+)")
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def check_instances(pc: ParsedConfig, ctx: CheckContext) -> Iterator[Finding]:
    if pc.config.HasField("ensemble_scheduling"):
        return  # instance groups are refused for ensembles by the ensemble rules
    for i, group in enumerate(pc.config.instance_group):
        yield from _group(pc, ctx, i, group)


def _group(pc: ParsedConfig, ctx: CheckContext, i: int, group: mc.ModelInstanceGroup) -> Iterator[Finding]:
    label = f"instance group {group.name or f'{pc.name}_{i}'} of model {pc.name}"
    kind = resolved_kind(group, ctx.target.gpus)
    if kind not in _KNOWN_KINDS:
        # The number is not a Kind; Triton's message names KIND_AUTO whatever the number was.
        yield pc.finding("instance-group", f"{label} has unexpected kind KIND_AUTO", "instance_group", i, "kind")
    elif kind in (_IG.KIND_CPU, _IG.KIND_MODEL) and group.gpus:
        yield pc.finding(
            "instance-group", f"{label} has kind {_IG.Kind.Name(kind)} but specifies one or more GPUs",
            "instance_group", i, "gpus",
        )  # fmt: skip
    elif kind == _IG.KIND_GPU:
        yield from _gpu_ids(pc, ctx, i, group, label)
    yield from _profiles(pc, i, group, label)


def resolved_kind(group: mc.ModelInstanceGroup, gpus: int | None) -> int:
    """NormalizeInstanceGroup: KIND_AUTO becomes CPU when any listed GPU (or every GPU) is missing.

    Stays KIND_AUTO when that depends on a GPU count nobody gave.
    """
    if group.kind != _IG.KIND_AUTO:
        return int(group.kind)
    if any(g < 0 for g in group.gpus):
        return int(_IG.KIND_CPU)
    if gpus is None:
        return int(_IG.KIND_AUTO)
    all_present = gpus > 0 and all(g < gpus for g in group.gpus)
    return int(_IG.KIND_GPU if all_present else _IG.KIND_CPU)


def _gpu_ids(
    pc: ParsedConfig, ctx: CheckContext, i: int, group: mc.ModelInstanceGroup, label: str
) -> Iterator[Finding]:
    gpus = ctx.target.gpus
    if not group.gpus and gpus == 0:
        yield pc.finding(
            "instance-group", f"{label} has kind KIND_GPU but no GPUs are available", "instance_group", i, "kind"
        )
    supported = ", ".join(str(g) for g in range(gpus)) if gpus is not None else "(unknown without --gpus)"
    for j, gid in enumerate(group.gpus):
        if gid < 0 or (gpus is not None and gid >= gpus):
            yield pc.finding(
                "instance-group",
                f"{label} specifies invalid or unsupported gpu id {gid}. GPUs with at least the minimum required "
                f"CUDA compute compatibility of {MIN_COMPUTE_CAPABILITY:.6f} are: {supported}",
                "instance_group", i, "gpus", j,
            )  # fmt: skip


def _profiles(pc: ParsedConfig, i: int, group: mc.ModelInstanceGroup, label: str) -> Iterator[Finding]:
    platform = effective_backend(pc)[1]
    if group.profile and platform != _TRT:
        yield pc.finding(
            "instance-group",
            # Triton's message runs "platform" into "specifies" when the platform is empty.
            f"{label} and platform{f' {platform}' if platform else ''} specifies profile field which is only "
            "supported for TensorRT models",
            "instance_group", i, "profile",
        )  # fmt: skip
        return
    for j, profile in enumerate(group.profile):
        problem = _profile_problem(profile)
        if problem == "negative":
            problem = (
                f"{label} and platform {platform} specifies invalid profile {profile}. The field should contain "
                "the string representation of a non-negative integer."
            )
        if problem is not None:
            yield pc.finding("instance-group", problem, "instance_group", i, "profile", j)


def _profile_problem(profile: str) -> str | None:
    """GetProfileIndex's complaint (std::stoi), "negative" for ValidateInstanceGroup's, or None."""
    if not profile:
        return "profile name must not be empty"
    match = _STOI.match(profile)
    if match is None:
        return f"unable to parse '{profile}': stoi"
    value = int(match.group(1))
    if not _INT32_MIN <= value <= _INT32_MAX:
        return f"unable to parse '{profile}': stoi is out of range (Triton 2.51 does not catch that error)"
    return "negative" if value < 0 else None
