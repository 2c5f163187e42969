"""Ensemble rules: the step graph on its own, then against the composing models' configs.

Messages follow core ``src/model_config_utils.cc`` ``ValidateEnsembleSchedulingConfig`` /
``BuildEnsembleGraph``, ``ensemble_scheduler/ensemble_utils.cc`` ``ValidateEnsembleConfig`` and the
dependency graph of ``model_repository_manager.cc`` (missing models, cycles, step versions).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from tritonclient.grpc import model_config_pb2 as mc

from validation.context import ENSEMBLE_PLATFORM, CheckContext, selected_versions
from validation.findings import Finding
from validation.pbtxt import ParsedConfig


@dataclass(frozen=True, slots=True)
class _Tensor:
    """What one model says an ensemble tensor is (TensorNode in ensemble_utils.cc)."""

    model: str
    dtype: int
    dims: list[int]
    batching: bool

    @property
    def full_dims(self) -> list[int]:
        return [-1] * self.batching + self.dims


@dataclass(eq=False)
class _Node:
    is_output: bool
    ready: bool = False
    prev: list[_Node] = field(default_factory=list)
    next: list[_Node] = field(default_factory=list)


def check_ensemble(pc: ParsedConfig, ctx: CheckContext) -> Iterator[Finding]:
    cfg = pc.config
    if not cfg.HasField("ensemble_scheduling"):
        if cfg.platform == ENSEMBLE_PLATFORM:
            yield pc.finding(
                "ensemble",
                f"ensemble scheduling must be set for ensemble {pc.name} whose platform is ensemble",
                "platform",
            )
        return
    yield from _shape_of_config(pc)
    yield from _graph(pc)
    yield from _against_models(pc, ctx)


def _shape_of_config(pc: ParsedConfig) -> Iterator[Finding]:
    cfg, name = pc.config, pc.name
    if cfg.platform != ENSEMBLE_PLATFORM:
        yield pc.finding(
            "ensemble",
            f"ensemble scheduling cannot be set for model '{name}' whose platform is not ensemble",
            "platform",
        )
    if cfg.instance_group:
        yield pc.finding("ensemble", f"instance group should not be specified for ensemble '{name}'", "instance_group")
    if cfg.HasField("optimization"):
        yield pc.finding("ensemble", f"optimization should not be specified for ensemble '{name}'", "optimization")
    if cfg.model_warmup:
        yield pc.finding("ensemble", f"model_warmup can not be specified for ensemble '{name}'", "model_warmup")
    if not cfg.ensemble_scheduling.step:
        yield pc.finding("ensemble", f"must specify 'step' for ensemble '{name}'", "ensemble_scheduling")


def _graph(pc: ParsedConfig) -> Iterator[Finding]:
    """BuildEnsembleGraph and the data-flow walk: every tensor is produced, consumed, connected."""
    name, steps = pc.name, pc.config.ensemble_scheduling.step
    tensors: dict[str, _Node] = {}
    for i, step in enumerate(steps):
        where = ("ensemble_scheduling", "step", i)
        for what in ("model_name", "input_map", "output_map"):
            if not getattr(step, what):
                yield pc.finding("ensemble", f"must specify '{what}' in step {i} of ensemble '{name}'", *where)
                return  # Triton cannot build the graph past this step.
        produced = []
        for tensor in step.output_map.values():
            node = tensors.setdefault(tensor, _Node(is_output=False))
            if node.is_output:
                yield pc.finding(
                    "ensemble",
                    f"ensemble tensor '{tensor}' can appear in an output map only once for ensemble '{name}' step {i}",
                    *where, "output_map",
                )  # fmt: skip
            node.is_output = True
            produced.append(node)
        for tensor in step.input_map.values():
            node = tensors.setdefault(tensor, _Node(is_output=False))
            for out in produced:
                out.prev.append(node)
                node.next.append(out)
    ready: deque[_Node] = deque()
    for i, tensor in enumerate(pc.config.input):
        if tensor.name not in tensors:
            # Triton's message has the stray quote after the ensemble name; kept so the two read alike.
            yield pc.finding("ensemble", f"ensemble input '{tensor.name}' for ensemble {name}' is not used", "input", i)
            continue
        tensors[tensor.name].ready = True
        ready.append(tensors[tensor.name])
    while ready:
        for nxt in ready.popleft().next:
            if not nxt.ready and all(p.ready for p in nxt.prev):
                nxt.ready = True
                ready.append(nxt)
    outputs = {t.name for t in pc.config.output}
    for i, tensor in enumerate(pc.config.output):
        if tensor.name not in tensors:
            yield pc.finding(
                "ensemble", f"ensemble output '{tensor.name}' for ensemble {name}' is not used", "output", i
            )
        elif not tensors[tensor.name].ready:
            yield pc.finding("ensemble", _not_written(tensor.name, name, tensors), "output", i)
    for tensor_name, node in tensors.items():
        if tensor_name not in outputs and (not node.ready or not node.next):
            yield pc.finding(
                "ensemble", f"ensemble tensor '{tensor_name}' is unused in ensemble '{name}'", "ensemble_scheduling"
            )


def _not_written(output: str, ensemble: str, tensors: dict[str, _Node]) -> str:
    # Follow not-ready producers back to the tensor nothing writes, as Triton's message does.
    by_node = {id(node): tensor for tensor, node in tensors.items()}
    node, seen = tensors[output], {output}
    while True:
        source = next((p for p in node.prev if not p.ready and by_node[id(p)] not in seen), None)
        if source is None:
            break
        seen.add(by_node[id(source)])
        node = source
    message = f"output '{output}' for ensemble '{ensemble}' is not written"
    if by_node[id(node)] != output:
        message += f": at least one of its depending tensors, '{by_node[id(node)]}', is not connected"
    return message


def _against_models(pc: ParsedConfig, ctx: CheckContext) -> Iterator[Finding]:
    name, cfg = pc.name, pc.config
    steps = cfg.ensemble_scheduling.step
    missing = sorted({s.model_name for s in steps if s.model_name and ctx.models.get(s.model_name) is None})
    if missing:
        yield pc.finding(
            "ensemble-models",
            f"ensemble {name} contains models that are not available or ambiguous: {', '.join(missing)}",
            "ensemble_scheduling",
        )
    cycle = _cycle(pc, ctx)
    if cycle is not None:
        yield pc.finding(
            "ensemble-models",
            f"circular dependency between ensembles: {name} -> ... -> {cycle} -> {name}",
            "ensemble_scheduling",
        )
        return
    known: dict[str, _Tensor] = {}
    for tensor in [*cfg.input, *cfg.output]:
        dims = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
        known.setdefault(tensor.name, _Tensor(name, tensor.data_type, dims, cfg.max_batch_size > 0))
    for i, step in enumerate(steps):
        model = ctx.models.get(step.model_name) if step.model_name else None
        if model is not None:
            yield from _step(pc, i, step, model, known)


def _cycle(pc: ParsedConfig, ctx: CheckContext) -> str | None:
    """The ensemble whose step leads back to ``pc``, if any path of ensemble steps does."""
    stack, seen = [pc], {pc.name}
    while stack:
        current = stack.pop()
        for step in current.config.ensemble_scheduling.step:
            if step.model_name == pc.name:
                return current.name
            if step.model_name not in seen:
                seen.add(step.model_name)
                found = ctx.models.get(step.model_name)
                if found is not None:
                    stack.append(found)
    return None


def _step(
    pc: ParsedConfig,
    i: int,
    step: mc.ModelEnsembling.Step,
    model: ParsedConfig,
    known: dict[str, _Tensor],
) -> Iterator[Finding]:
    ens, cfg, m = pc.name, model.config, model.name
    where = ("ensemble_scheduling", "step", i)
    if step.model_version != -1 and step.model_version not in selected_versions(model):
        yield pc.finding(
            "ensemble-models",
            f"ensemble '{ens}' depends on '{m}' whose required version {step.model_version} is not loaded.",
            *where, "model_version",
        )  # fmt: skip
    if cfg.max_batch_size != 0 and cfg.max_batch_size < pc.config.max_batch_size:
        yield pc.finding(
            "ensemble-models",
            f"ensemble {ens} allows maximum batch size {pc.config.max_batch_size}, but it contains model {m} "
            f"which only allows maximum batch size to be {cfg.max_batch_size}",
            *where,
        )
    batching = cfg.max_batch_size > 0
    inputs = {t.name: t for t in cfg.input}
    outputs = {t.name: t for t in cfg.output}
    prefix = f"in ensemble {ens}, "
    for key, tensor in step.input_map.items():
        if key not in inputs:
            yield pc.finding(
                "ensemble-mapping",
                f"{prefix}ensemble tensor {tensor} is mapping to non-existing input {key} in model {m}",
                *where, "input_map",
            )  # fmt: skip
    for model_input in cfg.input:
        if model_input.name in step.input_map:
            tensor = step.input_map[model_input.name]
            here = _Tensor(m, model_input.data_type, list(model_input.dims), batching)
            found = _consistency(prefix, tensor, known, here)
            yield from (pc.finding("ensemble-mapping", text, *where, "input_map") for text in found)
        elif not model_input.optional:
            yield pc.finding(
                "ensemble-mapping",
                f"{prefix}input {model_input.name} in model {m} is not mapped to any ensemble tensors",
                *where,
            )
    for key, tensor in step.output_map.items():
        if key not in outputs:
            yield pc.finding(
                "ensemble-mapping",
                f"{prefix}ensemble tensor {tensor} is mapped from non-existing output {key} in model {m}",
                *where, "output_map",
            )  # fmt: skip
        else:
            out = outputs[key]
            found = _consistency(prefix, tensor, known, _Tensor(m, out.data_type, list(out.dims), batching))
            yield from (pc.finding("ensemble-mapping", text, *where, "output_map") for text in found)


def _consistency(prefix: str, name: str, known: dict[str, _Tensor], here: _Tensor) -> list[str]:
    """ValidateTensorConsistency: the same ensemble tensor must agree in type and shape everywhere."""
    there = known.setdefault(name, here)
    if there is here:
        return []
    head = f"{prefix}ensemble tensor {name}: "
    if there.dtype != here.dtype:
        return [
            f"{head}inconsistent data type: {mc.DataType.Name(there.dtype)} is inferred from model {there.model} "
            f"while {mc.DataType.Name(here.dtype)} is inferred from model {here.model}"
        ]
    # A non-batching [-1, d...] may meet a batching [d...]: Triton compares with and without the batch dim.
    if not (_same(there.dims, here.dims) or _same(there.full_dims, here.full_dims)):
        return [
            f"{head}inconsistent shape: {_dims(there.full_dims)} is inferred from model {there.model} while "
            f"{_dims(here.full_dims)} is inferred from model {here.model}"
        ]
    return []


def _same(a: Sequence[int], b: Sequence[int]) -> bool:
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b, strict=True))


def _dims(dims: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"
