"""The layout the architecture promises: no import cycles between rooms, nothing imports a stage,
and every DVC stage lists every project module it imports (so editing one reruns that stage)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

PACKAGES = ("core", "tiny_model", "pipelines", "serving", "validation", "registry", "demo", "bench")


def _module_file(module: str) -> Path | None:
    path = ROOT.joinpath(*module.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def _modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).with_suffix("")
            parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
            yield ".".join(parts), path


@cache
def _imports(path: Path) -> frozenset[str]:
    """Project modules ``path`` imports anywhere (top level or inside functions)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name.split(".")[0] in PACKAGES and _module_file(name) is not None)
    return frozenset(found)


def package_graph() -> dict[str, set[str]]:
    """Top-level package -> the other top-level packages it imports."""
    graph: dict[str, set[str]] = {package: set() for package in PACKAGES}
    for module, path in _modules():
        top = module.split(".")[0]
        graph[top].update(name.split(".")[0] for name in _imports(path) if name.split(".")[0] != top)
    return graph


def test_the_packages_import_each_other_without_a_cycle() -> None:
    graph = package_graph()
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                pytest.fail(f"import cycle: {' -> '.join([*trail, node, nxt])}")
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = "done"

    for package in PACKAGES:
        if package not in state:
            visit(package, [])


def test_nothing_imports_a_stage() -> None:
    importers = {package for package, targets in package_graph().items() if "pipelines" in targets}
    assert importers == set(), f"{importers} import pipelines/, which holds only DVC stages"


def test_core_imports_no_room() -> None:
    assert package_graph()["core"] == set()


def _closure(module: str) -> set[Path]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None:
            continue
        todo.extend(_imports(path))
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
    files = {_module_file(name) for name in seen}
    return {path for path in files if path is not None}


def _only_a_docstring(path: Path) -> bool:
    """A package marker that carries no behaviour (editing its docstring changes nothing)."""
    body = ast.parse(path.read_text()).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def _stages() -> dict[str, dict[str, object]]:
    stages: dict[str, dict[str, object]] = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return stages


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_stage_lists_every_module_it_imports(stage: str) -> None:
    spec = _stages()[stage]
    match = re.search(r"python -m ([\w.]+)", str(spec["cmd"]))
    assert match, f"stage {stage} does not run a module"
    deps = [ROOT / str(dep) for dep in spec["deps"]]  # type: ignore[attr-defined]
    needed = {path for path in _closure(match.group(1)) if not _only_a_docstring(path)}
    missing = sorted(
        str(path.relative_to(ROOT)) for path in needed if not any(path == dep or dep in path.parents for dep in deps)
    )
    assert not missing, f"dvc.yaml stage {stage} imports these project modules but does not list them: {missing}"
