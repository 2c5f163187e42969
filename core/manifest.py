"""Content digests of a Triton model folder: sha256 per file and one digest over the whole manifest.

``validate`` records the digest of exactly what it served, ``register`` refuses files that differ
from it, and the registry keeps the per-file manifest to verify before anything is served. Python
bytecode is never part of a version: an interpreter may write it next to ``model.py``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from core.contract import CONFIG_FILE

#: The version folder's name inside a registered artifact (``model/version/...``).
VERSION_KEY = "version"
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def is_bytecode(relative: Path) -> bool:
    return "__pycache__" in relative.parts or relative.suffix in (".pyc", ".pyo")


def tree_digests(root: Path, prefix: str = "") -> dict[str, str]:
    """sha256 of every file under ``root`` (bytecode excluded), keyed by ``prefix`` + its POSIX path."""
    digests = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and not is_bytecode(relative):
            digests[prefix + relative.as_posix()] = sha256_file(path)
    return digests


def model_digests(model_dir: Path, version_dir: str) -> dict[str, str]:
    """A Triton model folder's files as the registry stores them: ``version/`` for its one version
    folder, model-level files (config.pbtxt, warmup/) under their own names; other versions and
    dot-folders are not part of it."""
    if not (model_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{model_dir / CONFIG_FILE}: not found")
    digests = tree_digests(model_dir / version_dir, prefix=f"{VERSION_KEY}/")
    for entry in sorted(model_dir.iterdir()):
        if entry.name.startswith(".") or entry.name == version_dir or entry.name.isdigit():
            continue
        if entry.is_dir():
            digests.update(tree_digests(entry, prefix=f"{entry.name}/"))
        elif entry.is_file():
            digests[entry.name] = sha256_file(entry)
    return digests


def manifest_digest(digests: Mapping[str, str]) -> str:
    """One digest over the whole manifest, in ``sha256sum`` line format, sorted by path."""
    lines = "".join(f"{digests[path]}  {path}\n" for path in sorted(digests))
    return hashlib.sha256(lines.encode()).hexdigest()
