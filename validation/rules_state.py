"""Implicit-state rules: a sequence model's ``state`` entries and their ``initial_state``.

Messages quote core ``sequence_batch_scheduler.cc`` (``SequenceBatchScheduler::Create``,
``GenerateInitialStateData``), which Triton 2.51 runs when it loads the model, and
``sequence_state.cc``, which it runs only when a sequence starts.
"""

from __future__ import annotations

from collections.abc import Iterator

from tritonclient.grpc import model_config_pb2 as mc

from validation.context import CheckContext, enum_name
from validation.findings import Finding
from validation.pbtxt import ParsedConfig
from validation.rules_instances import resolved_kind
from validation.rules_io import ELEMENT_BYTES, element_count

_IG = mc.ModelInstanceGroup
_WILDCARD = -1
_INITIAL_STATE_FOLDER = "initial_state"


def check_state(pc: ParsedConfig, ctx: CheckContext) -> Iterator[Finding]:
    if pc.config.WhichOneof("scheduling_choice") != "sequence_batching":
        return
    with_initial: set[str] = set()
    for i, state in enumerate(pc.config.sequence_batching.state):
        where = ("sequence_batching", "state", i)
        if len(state.initial_state) > 1:
            problem: str | None = (
                f"initial_state field for state input '{state.input_name}' must contain exactly one or zero "
                f"element. Found '{len(state.initial_state)}' elements."
            )
        elif state.initial_state:
            problem = _initial_state(pc, state, with_initial)
        else:
            problem = None
        if problem is not None:
            yield pc.finding("sequence-state", problem, *where, "initial_state")
        yield from _growable(pc, ctx, i, state)


def _initial_state(pc: ParsedConfig, state: mc.ModelSequenceBatching.State, seen: set[str]) -> str | None:
    """GenerateInitialStateData's first complaint about the state's one initial_state, or None."""
    initial, name = state.initial_state[0], state.input_name
    if initial.data_type != state.data_type:
        return f"The data type used for 'initial_state' field of state '{name}' does not match the state data type."
    if not initial.name:
        return f"Field 'name' must be set when using initial_state for state input '{name}'."
    if name in seen:
        return f"State input name '{name}' specified more than once."
    if len(initial.dims) != len(state.dims):
        return (
            "Number of dimensions in 'initial_state' doesn't match the size of 'state' dimensions for state input "
            f"'{name}'. {len(initial.dims)} != {len(state.dims)}"
        )
    seen.add(name)
    for given, declared in zip(initial.dims, state.dims, strict=True):
        if given == _WILDCARD:
            return f"'initial_state' field for state input name '{name}' contains variable dimensions."
        if declared not in (_WILDCARD, given):
            return (
                f"'initial_state' dim for input name '{name}' doesn't match 'state' dim description. "
                f"{given} != {declared}"
            )
    return _initial_data(pc, initial, name)


def _initial_data(pc: ParsedConfig, initial: mc.ModelSequenceBatching.InitialState, name: str) -> str | None:
    source = initial.WhichOneof("state_data")
    if source is None:
        # Triton's message has no space between "state" and the quote.
        return f"initial_state setting expects state'{name}' to have state_data set"
    if source != "data_file":
        return None
    path = pc.model_dir / _INITIAL_STATE_FOLDER / initial.data_file
    if not path.is_file():
        return f"failed to open text file for read {path}: No such file or directory"
    dtype = enum_name(mc.DataType, initial.data_type).removeprefix("TYPE_")
    needed, size = element_count(initial.dims) * ELEMENT_BYTES.get(dtype, 0), path.stat().st_size
    if dtype != "STRING" and size < needed:
        # Triton's message runs the file name into "only".
        return (
            f"initial_state setting expects {needed} bytes, but the data provided from {initial.data_file}only has "
            f"{size} bytes."
        )
    return None


def _growable(pc: ParsedConfig, ctx: CheckContext, i: int, state: mc.ModelSequenceBatching.State) -> Iterator[Finding]:
    """SequenceStates' growable-memory limits: the load passes, and the first sequence fails."""
    if not state.use_growable_memory:
        return
    where = ("sequence_batching", "state", i, "use_growable_memory")
    when = " (Triton 2.51 loads the model, then fails its first sequence)"
    # The field is use_same_buffer_for_input_output; Triton's message calls it 'use_single_buffer'.
    if not state.use_same_buffer_for_input_output:
        yield pc.finding(
            "sequence-state",
            "In order to 'use_growable_memory', you must also enable 'use_single_buffer' for state input name "
            f"'{state.input_name}'{when}",
            *where,
        )
    # No instance_group means one KIND_AUTO group for every GPU.
    groups = list(pc.config.instance_group) or [mc.ModelInstanceGroup()]
    if any(resolved_kind(g, ctx.target.gpus) in (_IG.KIND_CPU, _IG.KIND_MODEL) for g in groups):
        yield pc.finding(
            "sequence-state",
            "'use_growable_memory' can only work with KIND_GPU model instances right now. Please either change the "
            f"instance type to KIND_GPU or set 'use_growable_memory' to false for state '{state.input_name}'{when}",
            *where,
        )
