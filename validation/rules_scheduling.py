"""Scheduler rules: dynamic batching (preferred sizes, priorities, queue policies), sequence batching,
custom batching libraries.

Messages follow core ``src/model_config_utils.cc`` ``ValidateModelConfig`` and
``Get{Boolean,Typed}SequenceControlProperties``, and ``backend_model.cc`` ``TritonModel::Create``
(``TRITON_BATCH_STRATEGY_PATH``), as Triton 2.51 prints them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from validation.context import CheckContext
from validation.findings import Finding, Severity
from validation.locate import Key
from validation.pbtxt import ParsedConfig

_SB = mc.ModelSequenceBatching
_BOOLEAN_KINDS = (
    _SB.Control.CONTROL_SEQUENCE_START,
    _SB.Control.CONTROL_SEQUENCE_END,
    _SB.Control.CONTROL_SEQUENCE_READY,
)
_CORRID = _SB.Control.CONTROL_SEQUENCE_CORRID
_CORRID_TYPES = (mc.TYPE_UINT64, mc.TYPE_INT64, mc.TYPE_UINT32, mc.TYPE_INT32, mc.TYPE_STRING)
_VALUE_LISTS = ("int32_false_true", "fp32_false_true", "bool_false_true")
_STRATEGY = "TRITON_BATCH_STRATEGY_PATH"


def check_scheduling(pc: ParsedConfig, ctx: CheckContext) -> Iterator[Finding]:
    cfg = pc.config
    choice = cfg.WhichOneof("scheduling_choice")
    if choice != "ensemble_scheduling" and _STRATEGY in cfg.parameters:
        yield from _batch_strategy(pc, sequence=choice == "sequence_batching")
    if choice == "dynamic_batching":
        yield from _dynamic(pc)
    elif choice == "sequence_batching":
        yield from _sequence(pc)
    elif choice is None and cfg.max_batch_size > 0:
        yield pc.finding(
            "batching-without-scheduler",
            f"max_batch_size is {cfg.max_batch_size} but neither dynamic_batching nor sequence_batching is set: "
            "Triton never combines requests into a batch (only a client's own batched request is one)",
            "max_batch_size",
            severity=Severity.WARNING,
        )


def _dynamic(pc: ParsedConfig) -> Iterator[Finding]:
    cfg, suffix = pc.config, f" for {pc.name}"
    db = cfg.dynamic_batching
    if cfg.max_batch_size == 0 and not db.preferred_batch_size:
        yield pc.finding(
            "dynamic-batching",
            "dynamic_batching has no effect: max_batch_size is 0, so Triton never batches requests",
            "dynamic_batching",
            severity=Severity.WARNING,
        )
    for i, size in enumerate(db.preferred_batch_size):
        if size <= 0:
            message = f"dynamic batching preferred size must be positive{suffix}"
        elif size > cfg.max_batch_size:
            message = f"dynamic batching preferred size must be <= max batch size{suffix}"
        else:
            continue
        yield pc.finding("dynamic-batching", message, "dynamic_batching", "preferred_batch_size", i)
    levels = db.priority_levels
    if levels:
        in_range = f"in range [1, {levels}]{suffix}"
        if not 1 <= db.default_priority_level <= levels:
            yield pc.finding(
                "priority", f"default priority level must be {in_range}", "dynamic_batching", "default_priority_level"
            )
        for level in sorted(db.priority_queue_policy):
            if not 1 <= level <= levels:
                yield pc.finding(
                    "priority", f"priority queue policy must have priority level {in_range}",
                    "dynamic_batching", "priority_queue_policy",
                )  # fmt: skip
    if db.preserve_ordering:
        if levels > 1:
            yield pc.finding(
                "queue-policy", f"Only one priority level is allowed when 'preserve_ordering' is true{suffix}",
                "dynamic_batching", "preserve_ordering",
            )  # fmt: skip
        policies = [("default_queue_policy", db.default_queue_policy), *db.priority_queue_policy.items()]
        for where, policy in policies:
            if policy.default_timeout_microseconds and policy.timeout_action == mc.ModelQueuePolicy.DELAY:
                field = where if isinstance(where, str) else "priority_queue_policy"
                yield pc.finding(
                    "queue-policy",
                    f"Queue policy can not have DELAY as timeout action when 'preserve_ordering' is true{suffix}",
                    "dynamic_batching", field,
                )  # fmt: skip


def _batch_strategy(pc: ParsedConfig, sequence: bool) -> Iterator[Finding]:
    """A custom batching library: refused with the sequence batcher, and it must exist (checked at load)."""
    where = ("parameters", Key(_STRATEGY))
    if sequence:
        yield pc.finding(
            "batch-strategy",
            f"{_STRATEGY} cannot be specified with sequence batcher, using default batching strategy",
            *where,
        )
        return
    path = pc.config.parameters[_STRATEGY].string_value
    if path and not Path(path).is_absolute():
        yield pc.finding(
            "batch-strategy",
            f"{_STRATEGY} '{path}' is relative: Triton 2.51 looks for it from the server's working directory, "
            "not the model folder, and fails the load with 'Batching library path not found' if it is not there",
            *where,
            severity=Severity.WARNING,
        )
    elif not path or not Path(path).exists():  # Path("") would be the current folder
        yield pc.finding("batch-strategy", f"Batching library path not found: {path}", *where)


def _sequence(pc: ParsedConfig) -> Iterator[Finding]:
    cfg, suffix = pc.config, f" for {pc.name}"
    sb = cfg.sequence_batching
    if cfg.response_cache.enable:
        yield pc.finding(
            "response-cache",
            f"Response Cache does not currently support model {pc.name} with sequence batching scheduler. "
            "Please disable the response cache.",
            "response_cache",
        )
    seen: set[str] = set()
    for i, tensor in enumerate(sb.control_input):
        if not tensor.name:
            yield pc.finding(
                "sequence-control", f"sequence batching control tensor must have a name{suffix}",
                "sequence_batching", "control_input", i,
            )  # fmt: skip
        elif tensor.name in seen:
            yield pc.finding(
                "sequence-control",
                f"sequence batching control tensor '{tensor.name}' is specified for multiple control kinds{suffix}",
                "sequence_batching", "control_input", i, "name",
            )  # fmt: skip
        seen.add(tensor.name)
    for kind in (*_BOOLEAN_KINDS, _CORRID):
        yield from _control_kind(pc, kind)
    for i, size in enumerate(sb.oldest.preferred_batch_size):
        if size <= 0 or size > cfg.max_batch_size:
            bound = "be positive" if size <= 0 else "be <= max batch size"
            yield pc.finding(
                "sequence-batching", f"sequence batching preferred batch size must {bound}{suffix}",
                "sequence_batching", "oldest", "preferred_batch_size", i,
            )  # fmt: skip
    utilization = sb.direct.minimum_slot_utilization
    if sb.HasField("direct") and not 0.0 <= utilization <= 1.0:
        yield pc.finding(
            "sequence-batching", f"sequence batching minimum slot utilization must be in range (0.0, 1.0]{suffix}",
            "sequence_batching", "direct", "minimum_slot_utilization",
        )  # fmt: skip


def _control_kind(pc: ParsedConfig, kind: int) -> Iterator[Finding]:
    kind_name = _SB.Control.Kind.Name(kind)
    suffix = f" for {kind_name} for {pc.name}"
    seen = False
    for i, tensor in enumerate(pc.config.sequence_batching.control_input):
        for control in tensor.control:
            if control.kind != kind:
                continue
            where = ("sequence_batching", "control_input", i, "control")
            if seen:
                yield pc.finding(
                    "sequence-control",
                    f"sequence batching specifies multiple {kind_name} tensors for {pc.name}",
                    *where,
                )
            seen = True
            given = [name for name in _VALUE_LISTS if len(getattr(control, name))]
            if kind == _CORRID:
                if given:
                    yield pc.finding(
                        "sequence-control",
                        "sequence batching must not specify either 'int32_false_true', 'fp32_false_true' or "
                        f"'bool_false_true'{suffix}",
                        *where,
                    )
                elif control.data_type not in _CORRID_TYPES:
                    yield pc.finding(
                        "sequence-control",
                        f"unexpected data type for control {kind_name} for {pc.name}. Allowed data types are "
                        "TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 and TYPE_STRING",
                        *where,
                    )
            elif not given:
                yield pc.finding(
                    "sequence-control",
                    f"sequence batching must specify either 'int32_false_true', 'fp32_false_true' or "
                    f"'bool_false_true'{suffix}",
                    *where,
                )
            elif len(given) > 1:
                yield pc.finding(
                    "sequence-control",
                    "sequence batching specifies more than one from 'int32_false_true', 'fp32_false_true' and "
                    f"'bool_false_true'{suffix}",
                    *where,
                )
            elif len(getattr(control, given[0])) != 2:
                yield pc.finding(
                    "sequence-control",
                    f"sequence batching control '{given[0]}' must have exactly 2 entries{suffix}",
                    *where,
                )
