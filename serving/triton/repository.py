"""Serve exactly these versions: build a Triton repository of links, and load or unload through Triton's API.

Every served version is its own Triton model (``core.names.served_model_name``) whose folder holds a
rewritten ``config.pbtxt`` (its own name, ``version_policy`` narrowed to that one version) and links
to the version folder and model-level folders (warmup data) of a source model folder: the packaged
one under ``triton-models/`` or one materialized from the registry.

The version folder is a fresh folder of hard links, not a symlink: the Python backend's embedded
interpreter ignores ``PYTHONDONTWRITEBYTECODE`` and writes ``__pycache__`` next to ``model.py``,
which must land here and never in the source that was validated or registered. Nothing is copied
(a hard link costs nothing, even for an 8B checkpoint) unless the two sit on different filesystems.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from core.contract import CONFIG_FILE
from core.files import atomic_dir
from core.names import check_model_name

log = logging.getLogger(__name__)


class RepositoryError(Exception):
    """A source folder cannot be served, or Triton refused to load or unload a model."""


@dataclass(frozen=True, slots=True)
class ServedModel:
    """One Triton model to serve: ``name`` version ``version``, from ``source`` (a model folder).

    ``source_version`` is the name of the version folder inside ``source`` (``"1"`` for a packaged
    model, ``"version"`` for a registry artifact).
    """

    name: str
    version: int
    source: Path
    source_version: str

    def __post_init__(self) -> None:
        check_model_name(self.name, "served model name")
        if self.version < 1:
            raise ValueError(f"version {self.version} must be a positive integer")


def serving_config(source: Path, name: str, version: int) -> str:
    """The source's ``config.pbtxt`` renamed to ``name`` and narrowed to exactly ``version``."""
    path = source / CONFIG_FILE
    try:
        config = text_format.Parse(path.read_text(), pb.ModelConfig())
    except (OSError, text_format.ParseError) as exc:
        raise RepositoryError(f"{path}: not a readable Triton model config: {exc}") from exc
    config.name = name
    config.ClearField("version_policy")
    config.version_policy.specific.versions.append(version)
    return str(text_format.MessageToString(config))


def place(model: ServedModel, repository: Path) -> Path:
    """Write ``repository/<name>/`` for ``model`` (replacing an older one atomically); return it."""
    version_dir = model.source / model.source_version
    if not version_dir.is_dir():
        raise RepositoryError(f"{version_dir}: no such version folder to serve as {model.name}")
    config = serving_config(model.source, model.name, model.version)
    with atomic_dir(repository / model.name) as tmp:
        (tmp / CONFIG_FILE).write_text(config)
        link_tree(version_dir, tmp / str(model.version))
        for extra in sorted(model.source.iterdir()):
            skip = extra.name == model.source_version or _is_version_name(extra.name) or extra.name.startswith(".")
            if extra.is_dir() and not skip:
                (tmp / extra.name).symlink_to(extra.resolve(), target_is_directory=True)
    return repository / model.name


def link_tree(source: Path, dest: Path) -> None:
    """Recreate ``source``'s folders under ``dest`` with hard links to its files (bytecode left out)."""
    source = source.resolve()
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if "__pycache__" in relative.parts or path.suffix == ".pyc":
            continue
        target = dest / relative
        if path.is_dir():
            target.mkdir(exist_ok=True)
            continue
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def narrow(repository: Path, models: Iterable[ServedModel]) -> list[str]:
    """Make ``repository`` hold exactly ``models`` (placed or refreshed); return the names removed.

    Remove a model's folder only after Triton has unloaded it: call ``unload`` first.
    """
    repository.mkdir(parents=True, exist_ok=True)
    wanted = {model.name: model for model in models}
    for model in wanted.values():
        place(model, repository)
    removed = []
    for entry in sorted(repository.iterdir()):
        if entry.is_dir() and not entry.name.startswith(".") and entry.name not in wanted:
            shutil.rmtree(entry)
            removed.append(entry.name)
    return removed


def remove(repository: Path, name: str) -> None:
    """Delete one model's folder (its links, never the sources they point to)."""
    check_model_name(name, "served model name")
    folder = repository / name
    if folder.is_dir():
        shutil.rmtree(folder)


def _is_version_name(name: str) -> bool:
    return name.isdigit()


class RepositoryControl:
    """Load, unload and inspect models of a Triton running with ``--model-control-mode=explicit``."""

    def __init__(self, http_url: str, timeout_s: float = 300.0) -> None:
        import tritonclient.http as httpclient

        self.url = http_url.split("://", 1)[-1].rstrip("/")
        self._client: Any = httpclient.InferenceServerClient(
            self.url, connection_timeout=timeout_s, network_timeout=timeout_s
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RepositoryControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load(self, name: str) -> None:
        """Load (or reload) ``name``; raise ``RepositoryError`` with Triton's reason when it fails."""
        from tritonclient.utils import InferenceServerException

        try:
            self._client.load_model(name)
        except InferenceServerException as exc:
            raise RepositoryError(f"Triton refused to load {name}: {exc.message() or exc}") from exc
        except OSError as exc:
            raise RepositoryError(f"Triton at {self.url} is unreachable while loading {name}: {exc}") from exc

    def unload(self, name: str, wait_s: float = 60.0) -> None:
        """Unload ``name``; Triton finishes its in-flight requests first. Waits until it is gone."""
        from tritonclient.utils import InferenceServerException

        try:
            self._client.unload_model(name)
        except InferenceServerException as exc:
            raise RepositoryError(f"Triton refused to unload {name}: {exc.message() or exc}") from exc
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if name not in self.loaded():
                return
            time.sleep(0.1)
        raise RepositoryError(f"{name} still loaded {wait_s:.0f} s after the unload request")

    def is_ready(self, name: str) -> bool:
        from tritonclient.utils import InferenceServerException

        try:
            return bool(self._client.is_model_ready(name))
        except (InferenceServerException, OSError):
            return False

    def index(self) -> list[dict[str, Any]]:
        """Triton's repository index: every model it knows with its state (and reason when not ready)."""
        found: list[dict[str, Any]] = self._client.get_model_repository_index()
        return found

    def loaded(self) -> set[str]:
        """Names of models with a version READY (or still unloading) in Triton."""
        return {entry["name"] for entry in self.index() if entry.get("state") in ("READY", "UNLOADING")}
