"""Ensemble dependencies: every step model is there, loads, and leads back to no ensemble.

Messages quote core ``model_repository_manager.cc`` (``ConnectDependencyGraph``,
``CircularDependencyCheck``, ``CheckNode``) as Triton 2.51 prints them. A step model fails its
ensemble in one of three ways, by when its own first error strikes:

- while Triton polls the repository (the config cannot be read or validated): the model never
  enters the dependency graph, so the ensemble "contains models that are not available";
- on the step model's own dependency node (it is an ensemble with a bad step): the ensemble
  "depends on ... which is not valid";
- while the step model's versions load (backend, instances, files): the ensemble "depends on ...
  which has no loaded version".
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from validation.context import CheckContext, selected_versions
from validation.findings import Finding, Severity
from validation.pbtxt import ParsedConfig

# Rules whose errors Triton raises while it polls a model (ReadTextProto, autofill,
# ValidateModelConfig, ValidateModelIOConfig under strict config, the folder-name check).
POLL_RULES = frozenset({
    "syntax", "config-missing", "config-unreadable", "schema-newer-than-server", "name-folder", "backend-missing",
    "backend-platform", "max-batch-size", "response-cache", "io-shape", "batch-io", "dynamic-batching", "priority",
    "queue-policy", "sequence-control", "sequence-batching", "ensemble",
})  # fmt: skip
# Rules whose errors Triton raises on an ensemble's dependency node (CheckNode, ValidateEnsembleConfig).
ENSEMBLE_RULES = frozenset({"ensemble-models", "ensemble-mapping", "ensemble-decoupled"})


def check_dependencies(pc: ParsedConfig, ctx: CheckContext) -> Iterator[Finding]:
    """The dependency graph's verdict on one ensemble, as Triton reaches it: the first failing stage only."""
    names = list(dict.fromkeys(s.model_name for s in pc.config.ensemble_scheduling.step if s.model_name))
    unavailable = sorted(name for name in names if not _available(ctx, name))
    if unavailable:
        yield pc.finding(
            "ensemble-models",
            f"ensemble {pc.name} contains models that are not available or ambiguous: {', '.join(unavailable)}",
            "ensemble_scheduling",
        )
        return
    cycle = _cycle(pc, ctx)
    if cycle is not None:
        yield pc.finding("ensemble-models", _cycle_message(pc.name, *cycle), "ensemble_scheduling")
        return
    for name in names:
        yield from _step_model(pc, ctx, name)


def _available(ctx: CheckContext, name: str) -> bool:
    model = ctx.models.get(name)
    return model is not None and not any(f.rule in POLL_RULES for f in _errors(ctx.findings_of(model)))


def _errors(findings: Sequence[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity is Severity.ERROR]


def _cycle(pc: ParsedConfig, ctx: CheckContext) -> tuple[str, str] | None:
    """The first cycle of ensemble steps reachable from ``pc``: (where it starts, the step leading back)."""
    path: list[str] = []
    cleared: set[str] = set()

    def visit(model: ParsedConfig) -> tuple[str, str] | None:
        # By folder, the name steps are looked up by: a config naming itself otherwise would never
        # be found on the path again, and the walk would recurse until Python gave up.
        path.append(model.model_dir.name)
        for step in model.config.ensemble_scheduling.step:
            if step.model_name in path:
                return step.model_name, model.name
            found = ctx.models.get(step.model_name) if step.model_name not in cleared else None
            if found is not None and found.config.HasField("ensemble_scheduling"):
                hit = visit(found)
                if hit is not None:
                    return hit
        cleared.add(path.pop())
        return None

    return visit(pc)


def _cycle_message(ensemble: str, start: str, last: str) -> str:
    loop = f"{start} -> ... -> {last} -> {start}"
    if start == ensemble:
        return f"circular dependency between ensembles: {loop}"
    # CircularDependencyCheck stops only on a path back to the ensemble it started from.
    return (
        f"ensemble {ensemble} leads into the circular dependency {loop}, which it is not part of: Triton 2.51's "
        "circular dependency check then recurses without end and the server crashes"
    )


def _step_model(pc: ParsedConfig, ctx: CheckContext, name: str) -> Iterator[Finding]:
    """CheckNode for one upstream: its own verdict first, then the versions the steps ask of it."""
    model = ctx.models.get(name)
    if model is None:
        return
    steps = [(i, s) for i, s in enumerate(pc.config.ensemble_scheduling.step) if s.model_name == name]
    where = ("ensemble_scheduling", "step", steps[0][0], "model_name")
    errors = _errors(ctx.findings_of(model))
    invalid = [f for f in errors if f.rule in ENSEMBLE_RULES]
    if invalid:
        yield pc.finding(
            "ensemble-models",
            f"ensemble '{pc.name}' depends on '{name}' which is not valid. Model '{name}' failed with error: "
            f"{invalid[0].message}",
            *where,
        )
    elif errors:
        # Triton wraps a version's error as "version N is at UNAVAILABLE state: <code>: <error>;".
        yield pc.finding(
            "ensemble-models",
            f"ensemble '{pc.name}' depends on '{name}' which has no loaded version. Model '{name}' loading failed "
            f"with error: {errors[0].message}",
            *where,
        )
    else:
        loaded = selected_versions(model)
        for i, step in steps:
            if step.model_version != -1 and step.model_version not in loaded:
                yield pc.finding(
                    "ensemble-models",
                    f"ensemble '{pc.name}' depends on '{name}' whose required version {step.model_version} is not "
                    "loaded.",
                    "ensemble_scheduling", "step", i, "model_version",
                )  # fmt: skip
