"""Warmup rules: the samples Triton runs through each instance as it loads the model.

Messages follow core ``backend_model_instance.cc`` ``GenerateWarmupData`` plus the request checks a
warmup sample goes through (``infer_request.cc``), as Triton 2.51 prints them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from tritonclient.grpc import model_config_pb2 as mc

from validation.context import CheckContext, enum_name
from validation.findings import Finding, Severity
from validation.locate import Key
from validation.pbtxt import ParsedConfig
from validation.rules_io import ELEMENT_BYTES, element_count, shape_problem

_WILDCARD = -1


def check_warmup(pc: ParsedConfig, ctx: CheckContext) -> Iterator[Finding]:
    if not pc.config.HasField("ensemble_scheduling"):
        yield from _warmup(pc)


def _warmup(pc: ParsedConfig) -> Iterator[Finding]:
    cfg = pc.config
    if not cfg.model_warmup:
        yield pc.finding(
            "no-warmup",
            "no model_warmup: the first requests after every load pay for lazy initialisation",
            "name",
            severity=Severity.WARNING,
        )
        return
    declared = {t.name: t for t in cfg.input}
    controls = {c.name for c in cfg.sequence_batching.control_input}
    for i, sample in enumerate(cfg.model_warmup):
        if sample.batch_size == 0:
            continue  # Triton skips batch-0 samples without looking at them.
        limit = max(cfg.max_batch_size, 1)
        if sample.batch_size > limit:
            yield pc.finding(
                "warmup-batch-size",
                f"failed to run warmup sample '{sample.name}': batch size {sample.batch_size} for '{pc.name}', "
                f"max allowed is {cfg.max_batch_size} (Triton 2.51 fails the load, or never finishes it)",
                "model_warmup", i, "batch_size",
            )  # fmt: skip
        for key, value in sample.inputs.items():
            yield from _warmup_input(pc, i, key, value, declared.get(key), key in controls)
        given = [name for name in sample.inputs if name in declared]
        required = [t.name for t in cfg.input if not t.optional]
        missing = [name for name in required if name not in sample.inputs]
        if missing:
            expected = (
                f"{len(cfg.input)} inputs"
                if len(required) == len(cfg.input)
                else f"number of inputs between {len(required)} and {len(cfg.input)}"
            )
            yield pc.finding(
                "warmup-inputs",
                f"expected {expected} but got {len(given)} inputs for model '{pc.name}'. Got input(s) "
                f"{_names(given)}, but missing required input(s) {_names(missing)}. (warmup '{sample.name}')",
                "model_warmup", i, "inputs",
            )  # fmt: skip


def _warmup_input(
    pc: ParsedConfig, i: int, key: str, value: mc.ModelWarmup.Input, declared: mc.ModelInput | None, control: bool
) -> Iterator[Finding]:
    where = ("model_warmup", i, "inputs", Key(key))
    count = element_count(value.dims)
    if count == _WILDCARD:
        yield pc.finding(
            "warmup-inputs",
            f"warmup setting expects all variable-size dimensions are specified for input '{key}'",
            *where,
        )
        return
    source = value.WhichOneof("input_data_type")
    if source is None:
        yield pc.finding("warmup-inputs", f"warmup setting expects input '{key}' to have input_data_type set", *where)
    elif source == "input_data_file":
        path = pc.model_dir / "warmup" / value.input_data_file
        dtype = enum_name(mc.DataType, value.data_type).removeprefix("TYPE_")
        needed = count * ELEMENT_BYTES.get(dtype, 4)
        if not path.is_file():
            yield pc.finding(
                "warmup-inputs", f"failed to open text file for read {path}: No such file or directory", *where
            )
        elif dtype != "STRING" and path.stat().st_size < needed:
            yield pc.finding(
                "warmup-inputs",
                f"warmup setting expects {needed} bytes, but the data provided from {value.input_data_file} "
                f"only has {path.stat().st_size} bytes",
                *where,
            )
    if declared is not None and shape_problem(declared, pc.config.max_batch_size)[0] is not None:
        return  # The declaration itself is already reported; comparing against it would only echo that.
    if declared is None:
        if not control:
            yield pc.finding(
                "warmup-inputs",
                f"warmup input '{key}' is not a model input; Triton ignores it",
                *where,
                severity=Severity.WARNING,
            )
        return
    got_type = enum_name(mc.DataType, value.data_type).removeprefix("TYPE_")
    want_type = enum_name(mc.DataType, declared.data_type).removeprefix("TYPE_")
    if got_type != want_type:
        yield pc.finding(
            "warmup-inputs",
            f"inference input '{key}' data-type is '{got_type}', but model '{pc.name}' expects '{want_type}'",
            *where,
        )
    batched = pc.config.max_batch_size > 0
    expected = [-1] * batched + list(declared.dims)
    got = [1] * batched + list(value.dims)
    if len(expected) != len(got) or any(e not in (_WILDCARD, g) for e, g in zip(expected, got, strict=False)):
        yield pc.finding(
            "warmup-inputs",
            f"unexpected shape for input '{key}' for model '{pc.name}'. Expected {_dims(expected)}, got {_dims(got)}",
            *where,
        )


def _names(names: Sequence[str]) -> str:
    return "[" + ", ".join(f"'{n}'" for n in names) + "]"


def _dims(dims: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"
