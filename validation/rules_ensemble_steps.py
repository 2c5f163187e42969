"""Ensemble rules against the composing models: batch sizes, tensor mappings, decoupled data flow.

Messages quote core ``ensemble_scheduler/ensemble_utils.cc`` ``ValidateEnsembleConfig`` /
``ValidateTensorMapping`` as Triton 2.51 prints them. Triton runs these only once every step model
has loaded, so they run here only when ``rules_ensemble_deps`` finds nothing wrong with the steps.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from tritonclient.grpc import model_config_pb2 as mc

from validation.context import CheckContext, enum_name
from validation.findings import Finding
from validation.pbtxt import ParsedConfig
from validation.rules_ensemble_deps import check_dependencies


@dataclass(eq=False)
class _Sibling:
    """The outputs of one step share a decoupled label (the symbolic sibling node of ensemble_utils.cc)."""

    label: int = 0
    visited: bool = False


@dataclass(eq=False)
class _Tensor:
    """An ensemble tensor as the model that first named it says it is (TensorNode in ensemble_utils.cc)."""

    model: str
    dtype: int
    dims: list[int]
    batching: bool
    decoupled: bool = False
    label: int = 0
    visited: bool = False
    sibling: _Sibling | None = None
    prev: list[_Tensor] = field(default_factory=list)
    next: list[_Tensor] = field(default_factory=list)

    @property
    def full_dims(self) -> list[int]:
        return [-1] * self.batching + self.dims


def check_ensemble_steps(pc: ParsedConfig, ctx: CheckContext) -> Iterator[Finding]:
    if not pc.config.HasField("ensemble_scheduling"):
        return
    dependencies = list(check_dependencies(pc, ctx))
    yield from dependencies
    if not dependencies:
        yield from _validate(pc, ctx)


def _validate(pc: ParsedConfig, ctx: CheckContext) -> Iterator[Finding]:
    """ValidateEnsembleConfig: each step against its model, then the decoupled labels along the data flow."""
    cfg = pc.config
    tensors: dict[str, _Tensor] = {}
    for tensor in cfg.input:
        tensors.setdefault(tensor.name, _declared(pc, tensor))
    # The ensemble's outputs all feed one sink: they too must come from a single decoupled origin.
    sink = _Tensor(pc.name, mc.TYPE_INVALID, [], batching=False)
    for tensor in cfg.output:
        node = tensors.setdefault(tensor.name, _declared(pc, tensor))
        sink.prev.append(node)
        node.next.append(sink)
    complete = True
    for i, step in enumerate(cfg.ensemble_scheduling.step):
        model = ctx.models.get(step.model_name) if step.model_name else None
        found = [] if model is None else list(_step(pc, i, step, model, tensors))
        yield from found
        complete = complete and model is not None and not found
    conflict = _decoupled_conflict([t.name for t in cfg.input], tensors) if complete else None
    if conflict is not None:
        yield pc.finding(
            "ensemble-decoupled",
            f"in ensemble {pc.name}, step of model '{conflict}' receives inputs originated from different "
            "decoupled models",
            "ensemble_scheduling",
        )


def _declared(pc: ParsedConfig, tensor: mc.ModelInput | mc.ModelOutput) -> _Tensor:
    dims = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
    return _Tensor(pc.name, tensor.data_type, dims, pc.config.max_batch_size > 0)


def _step(
    pc: ParsedConfig, i: int, step: mc.ModelEnsembling.Step, model: ParsedConfig, tensors: dict[str, _Tensor]
) -> Iterator[Finding]:
    """ValidateTensorMapping for one step; links the step's tensors when it finds nothing."""
    ens, cfg, m = pc.name, model.config, model.name
    where = ("ensemble_scheduling", "step", i)
    if cfg.max_batch_size != 0 and cfg.max_batch_size < pc.config.max_batch_size:
        yield pc.finding(
            "ensemble-models",
            f"ensemble {ens} allows maximum batch size {pc.config.max_batch_size}, but it contains model {m} "
            f"which only allows maximum batch size to be {cfg.max_batch_size}",
            *where,
        )
        return
    found = [*_inputs(pc, step, model, tensors), *_outputs(pc, step, model, tensors)]
    yield from (pc.finding("ensemble-mapping", message, *where, field) for message, field in found)
    if not found:
        for tensor in step.output_map.values():
            node = tensors[tensor]
            node.decoupled = cfg.model_transaction_policy.decoupled
            for source in step.input_map.values():
                node.prev.append(tensors[source])
                tensors[source].next.append(node)


def _inputs(
    pc: ParsedConfig, step: mc.ModelEnsembling.Step, model: ParsedConfig, tensors: dict[str, _Tensor]
) -> Iterator[tuple[str, str]]:
    prefix, m, cfg = f"in ensemble {pc.name}, ", model.name, model.config
    names = {t.name for t in cfg.input}
    for key, tensor in step.input_map.items():
        if key not in names:
            yield f"{prefix}ensemble tensor {tensor} is mapping to non-existing input {key} in model {m}", "input_map"
    for model_input in cfg.input:
        if model_input.name in step.input_map:
            tensor = step.input_map[model_input.name]
            here = _Tensor(m, model_input.data_type, list(model_input.dims), cfg.max_batch_size > 0)
            yield from ((text, "input_map") for text in _consistency(prefix, tensor, tensors, here))
        elif not model_input.optional:
            yield f"{prefix}input {model_input.name} in model {m} is not mapped to any ensemble tensors", "input_map"


def _outputs(
    pc: ParsedConfig, step: mc.ModelEnsembling.Step, model: ParsedConfig, tensors: dict[str, _Tensor]
) -> Iterator[tuple[str, str]]:
    prefix, m, cfg = f"in ensemble {pc.name}, ", model.name, model.config
    sibling = _Sibling()
    for key, tensor in step.output_map.items():
        declared = [t for t in cfg.output if t.name == key]
        if not declared:
            missing = f"{prefix}ensemble tensor {tensor} is mapped from non-existing output {key} in model {m}"
            yield missing, "output_map"
            continue
        for out in declared:
            here = _Tensor(m, out.data_type, list(out.dims), cfg.max_batch_size > 0)
            yield from ((text, "output_map") for text in _consistency(prefix, tensor, tensors, here))
            tensors[tensor].sibling = sibling
        if len(declared) > 1:
            # Two outputs of the model share the name: both would write the one ensemble tensor.
            yield f"{prefix}multiple outputs in model {m} are mapped to the same ensemble tensor {tensor}", "output_map"


def _consistency(prefix: str, name: str, tensors: dict[str, _Tensor], here: _Tensor) -> list[str]:
    """ValidateTensorConsistency: the same ensemble tensor must agree in type and shape everywhere."""
    there = tensors.setdefault(name, here)
    if there is here:
        return []
    head = f"{prefix}ensemble tensor {name}: "
    if there.dtype != here.dtype:
        return [
            f"{head}inconsistent data type: {enum_name(mc.DataType, there.dtype)} is inferred from model "
            f"{there.model} while {enum_name(mc.DataType, here.dtype)} is inferred from model {here.model}"
        ]
    # A non-batching [-1, d...] may meet a batching [d...]: Triton compares with and without the batch dim.
    if not (_same(there.dims, here.dims) or _same(there.full_dims, here.full_dims)):
        return [
            f"{head}inconsistent shape: {_dims(there.full_dims)} is inferred from model {there.model} while "
            f"{_dims(here.full_dims)} is inferred from model {here.model}"
        ]
    return []


def _decoupled_conflict(inputs: Sequence[str], tensors: dict[str, _Tensor]) -> str | None:
    """The model named by the first tensor whose sources carry different decoupled labels, if any.

    Walks the data flow from the ensemble inputs (label 0). A decoupled step gives its outputs a new
    label; any other step passes its inputs' label on, so its inputs must agree on one.
    """
    labels = itertools.count(1)
    ready: deque[_Tensor] = deque()
    for name in inputs:
        tensors[name].visited = True
        ready.append(tensors[name])
    while ready:
        for node in ready.popleft().next:
            if node.visited or not all(p.visited for p in node.prev):
                continue
            label = node.prev[0].label
            if any(p.label != label for p in node.prev):
                return node.model
            if node.sibling is not None and node.sibling.visited:
                node.label = node.sibling.label
            else:
                node.label = next(labels) if node.decoupled else label
                if node.sibling is not None:
                    node.sibling.label, node.sibling.visited = node.label, True
            node.visited = True
            ready.append(node)
    return None


def _same(a: Sequence[int], b: Sequence[int]) -> bool:
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b, strict=True))


def _dims(dims: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"
