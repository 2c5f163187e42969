"""Ensemble rules on the config alone: the scheduling fields and the step graph's data flow.

Messages follow core ``src/model_config_utils.cc`` ``ValidateEnsembleSchedulingConfig`` /
``BuildEnsembleGraph``, which Triton 2.51 runs when it polls the repository. The rules against the
composing models live in ``rules_ensemble_steps`` and ``rules_ensemble_deps``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from validation.context import ENSEMBLE_PLATFORM, CheckContext
from validation.findings import Finding
from validation.pbtxt import ParsedConfig


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
