"""Shared helpers for the offline checks of containers/ and deploy/: the lock, Dockerfiles, compose interpolation."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "containers"
DEPLOY = ROOT / "deploy"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
REQUIREMENTS = sorted((DOCKER / "requirements").glob("*.txt"))
COMPOSE = DOCKER / "compose.yaml"

_REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?P<extras>\[[^\]]+\])?==(?P<version>\S+)$")
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def normalize(name: str) -> str:
    """PEP 503 name normalization: ``PyYAML`` and ``pyyaml``, ``prometheus_client`` and ``prometheus-client``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[normalize(name)] = version.strip()
    return pins


def requirement_pins(path: Path) -> list[tuple[str, str, int]]:
    """``(name, version, line)`` of every requirement; AssertionError on a line that is not ``name==version``."""
    found = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        match = _REQUIREMENT.match(text)
        assert match, f"{path.name}:{number}: {text!r} is not pinned as name==version"
        found.append((normalize(match["name"]), match["version"], number))
    return found


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str
    line: int
    comments: tuple[str, ...]


def dockerfile(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined, each with the comment lines right above it."""
    instructions: list[Instruction] = []
    comments: list[str] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            comments = [*comments, line] if line.startswith("#") else []
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        pending.append(line.removesuffix("\\").strip())
        if not line.endswith("\\"):
            keyword, _, value = " ".join(pending).partition(" ")
            instructions.append(Instruction(keyword.upper(), value.strip(), start, tuple(comments)))
            pending, comments = [], []
    return instructions


def shell_words(value: str) -> list[str]:
    return shlex.split(value)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose-style ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` over a loaded YAML tree."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if name in env and (env[name] or not (op or "").startswith(":")):
            return env[name]
        if op in (":?", "?"):
            raise KeyError(f"{name}: {arg}")
        return arg or ""

    return _VARIABLE.sub(replace, value)


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE.read_text())
    return raw if env is None else interpolate(raw, env)


PROJECT_PACKAGES = ("core", "tiny_model", "pipelines", "serving", "validation", "registry", "deploy")


def _module_file(module: str) -> Path | None:
    path = ROOT.joinpath(*module.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def third_party_imports(entry_modules: list[str]) -> dict[str, str]:
    """Top-level third-party modules the entry modules can import (lazy imports included), each with a
    project module that imports it."""
    import ast
    import sys

    seen: set[str] = set()
    found: dict[str, str] = {}
    todo = list(entry_modules)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(module)
        if path is None:
            continue
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in PROJECT_PACKAGES:
                    todo.append(name)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, module)
    return found


def installable(requirement_file: Path) -> set[str]:
    """Distributions a pip install of ``requirement_file`` brings (its pins and their dependencies, extras
    included), as installed in this environment (same Python as the images)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    wanted: list[tuple[str, frozenset[str]]] = []
    for line in requirement_file.read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            requirement = Requirement(text)
            wanted.append((normalize(requirement.name), frozenset(requirement.extras)))
    closure: set[str] = set()
    while wanted:
        name, extras = wanted.pop()
        key = f"{name}[{','.join(sorted(extras))}]"
        if key in closure:
            continue
        closure.add(key)
        for spec in metadata.requires(name) or []:
            requirement = Requirement(spec)
            environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
            if requirement.marker is None or any(requirement.marker.evaluate(env) for env in environments):
                wanted.append((normalize(requirement.name), frozenset(requirement.extras)))
    return {key.split("[", 1)[0] for key in closure}
