"""Tensor rules: input/output shapes and reshapes, batch inputs/outputs.

Messages follow core ``src/model_config_utils.cc`` (``ValidateIOShape``, ``ValidateModelInput``,
``ValidateBatchIO``) as Triton 2.51 prints them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Literal

from tritonclient.grpc import model_config_pb2 as mc

from validation.context import CheckContext, effective_backend, enum_name
from validation.findings import Finding, Severity
from validation.pbtxt import ParsedConfig

_WILDCARD = -1
_TRT = "tensorrt_plan"
_BI = mc.BatchInput
_ONE_SOURCE_KINDS = (
    _BI.BATCH_ELEMENT_COUNT,
    _BI.BATCH_ACCUMULATED_ELEMENT_COUNT,
    _BI.BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO,
    _BI.BATCH_MAX_ELEMENT_COUNT_AS_SHAPE,
    _BI.BATCH_ITEM_SHAPE,
    _BI.BATCH_ITEM_SHAPE_FLATTEN,
)
ELEMENT_BYTES = {"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "BF16": 2, "UINT32": 4,
                 "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8}  # fmt: skip


def check_io(pc: ParsedConfig, ctx: CheckContext) -> Iterator[Finding]:
    platform = effective_backend(pc)[1]
    for i, tensor in enumerate(pc.config.input):
        yield from _tensor(pc, "input", i, tensor, platform)
    for i, tensor in enumerate(pc.config.output):
        yield from _tensor(pc, "output", i, tensor, platform)
    for i, tensor in enumerate(pc.config.output):
        # Triton reads an output's labels from the model folder when it loads the model.
        labels = pc.model_dir / tensor.label_filename
        if tensor.label_filename and not labels.is_file():
            yield pc.finding(
                "label-file",
                f"failed to open text file for read {labels}: No such file or directory",
                "output", i, "label_filename",
            )  # fmt: skip
    yield from _batch_io(pc)
    for field in ("input", "output"):
        counts = Counter(t.name for t in getattr(pc.config, field) if t.name)
        for name, n in counts.items():
            if n > 1:
                index = next(i for i, t in enumerate(getattr(pc.config, field)) if t.name == name)
                yield pc.finding(
                    "io-duplicate-name",
                    f"model {field} '{name}' is declared {n} times; Triton 2.51 loads it, but tensors are "
                    "matched by name, so only one of them can ever be used",
                    field, index, severity=Severity.WARNING,
                )  # fmt: skip


def element_count(dims: Sequence[int]) -> int:
    """Triton's GetElementCount: 0 for no dims, -1 when any dim is variable, else the product."""
    if _WILDCARD in dims:
        return _WILDCARD
    count = 0
    for d in dims:
        count = d if count == 0 else count * d
    return count


def _tensor(
    pc: ParsedConfig,
    field: Literal["input", "output"],
    i: int,
    io: mc.ModelInput | mc.ModelOutput,
    platform: str,
) -> Iterator[Finding]:
    # Triton stops at a tensor's first problem; later ones are usually the same mistake echoed.
    prefix = f"model {field} " + (f"'{io.name}' " if io.name else "")
    problem, where = shape_problem(io, pc.config.max_batch_size)
    if problem is not None:
        problem = prefix + problem
    elif isinstance(io, mc.ModelInput) and io.format in (io.FORMAT_NHWC, io.FORMAT_NCHW) and len(io.dims) != 3:
        problem, where = "model input NHWC/NCHW require 3 dims", ("format",)
    elif io.is_shape_tensor and platform != _TRT:
        problem, where = "shape tensors are only supported for TensorRT platform", ("is_shape_tensor",)
    elif io.is_non_linear_format_io and platform != _TRT:
        problem, where = (
            "Non-linear IO format is only supported for the TensorRT platform",
            ("is_non_linear_format_io",),
        )
    elif io.is_non_linear_format_io and len(io.dims) != 3:
        problem, where = f"Non-linear IO format {field} requires 3 dims", ("is_non_linear_format_io",)
    if problem is not None:
        yield pc.finding("io-shape", f"{problem} for {pc.name}", field, i, *where)


def shape_problem(io: mc.ModelInput | mc.ModelOutput, max_batch_size: int) -> tuple[str | None, tuple[str, ...]]:
    """ValidateIOShape's first failure (after its "model input 'X' " prefix) and the field at fault."""
    if not io.name:
        return "must specify 'name'", ()
    if io.data_type == mc.TYPE_INVALID:
        return "must specify 'data_type'", ("name",)
    if not io.dims:
        return "must specify 'dims'", ("name",)
    if io.HasField("reshape") and not io.reshape.shape and max_batch_size == 0:
        return "cannot have empty reshape for non-batching model as scalar tensors are not supported", ("reshape",)
    variable = "to indicate a variable-size dimension"
    if any(d < 1 and d != _WILDCARD for d in io.dims):
        return f"dimension must be integer >= 1, or -1 {variable}", ("dims",)
    if not io.HasField("reshape"):
        return None, ()
    shape = list(io.reshape.shape)
    if any(d < 1 and d != _WILDCARD for d in shape):
        return f"reshape dimensions must be integer >= 1, or -1 {variable}", ("reshape",)
    dims_size, reshape_size = element_count(io.dims), element_count(shape)
    if dims_size != reshape_size and (reshape_size != 0 or dims_size != 1):
        return "has different size for dims and reshape", ("reshape",)
    if dims_size == _WILDCARD:
        # Each run of fixed dims between variable ones must hold the same number of elements.
        left, right = _chunks(io.dims), _chunks(shape)
        if len(left) != len(right):
            return "has different number of variable-size dimensions for dims and reshape", ("reshape",)
        if left != right:
            return "has different size for dims and reshape", ("reshape",)
    return None, ()


def _chunks(dims: Sequence[int]) -> list[int]:
    counts, current = [], 1
    for d in dims:
        if d == _WILDCARD:
            counts.append(current)
            current = 1
        else:
            current *= d
    return [*counts, current]


def _batch_io(pc: ParsedConfig) -> Iterator[Finding]:
    inputs = {t.name for t in pc.config.input}
    outputs = {t.name for t in pc.config.output}
    suffix = f" for {pc.name}"
    for i, bi in enumerate(pc.config.batch_input):
        kind = enum_name(_BI.Kind, bi.kind)
        if bi.kind not in _ONE_SOURCE_KINDS:
            # A number the schema has no name for: Triton stops at it, and its message has an empty name.
            yield pc.finding("batch-io", f"unknown batch input kind '{kind}'{suffix}", "batch_input", i, "kind")
            continue
        if len(bi.source_input) != 1:
            yield pc.finding(
                "batch-io", f"batch input kind '{kind}' expects 1 source input, got {len(bi.source_input)}{suffix}",
                "batch_input", i, "source_input",
            )  # fmt: skip
        if bi.data_type not in (mc.TYPE_INT32, mc.TYPE_FP32):
            yield pc.finding(
                "batch-io",
                f"batch input data type must be TYPE_INT32 or TYPE_FP32{suffix}",
                "batch_input",
                i,
                "data_type",
            )
        for j, source in enumerate(bi.source_input):
            if source not in inputs:
                yield pc.finding(
                    "batch-io", f"unknown source input name '{source}'{suffix}", "batch_input", i, "source_input", j
                )
    for i, bo in enumerate(pc.config.batch_output):
        kind = enum_name(mc.BatchOutput.Kind, bo.kind)
        if bo.kind != mc.BatchOutput.BATCH_SCATTER_WITH_INPUT_SHAPE:
            yield pc.finding("batch-io", f"unknown batch output kind '{kind}'{suffix}", "batch_output", i, "kind")
            continue
        if len(bo.source_input) != 1:
            yield pc.finding(
                "batch-io", f"batch output kind '{kind}' expects 1 source input, got {len(bo.source_input)}{suffix}",
                "batch_output", i, "source_input",
            )  # fmt: skip
        for j, source in enumerate(bo.source_input):
            if source not in inputs:
                yield pc.finding(
                    "batch-io", f"unknown source input name '{source}'{suffix}", "batch_output", i, "source_input", j
                )
        seen: set[str] = set()
        for j, target in enumerate(bo.target_name):
            if target not in outputs:
                message = f"unknown target output name '{target}'{suffix}"
            elif target in seen:
                message = f"target output name '{target}' can only be specified once{suffix}"
            else:
                seen.add(target)
                continue
            yield pc.finding("batch-io", message, "batch_output", i, "target_name", j)
