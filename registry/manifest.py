"""The per-file manifest of a registered version: ``manifest.json`` next to its ``model/`` artifact.

``{"files": {"config.pbtxt": "<sha256>", "version/model.py": "<sha256>", ...}}``, keyed as
``core.manifest.model_digests`` keys them (bytecode never included). The version's tags tie it to
the registry record: ``manifest.sha256`` is the digest of this file's bytes and
``validation.served_digest`` the ``manifest_digest`` of its entries, so neither the file nor the
artifact can be edited in the artifact store without materialize refusing the version.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from core.manifest import manifest_digest, sha256_file
from registry.errors import TamperedArtifactError

MANIFEST_FILE = "manifest.json"


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    files: dict[str, str]


def to_bytes(digests: Mapping[str, str]) -> bytes:
    """The manifest file, canonical (sorted keys), so one set of files always gives the same bytes."""
    return (json.dumps({"files": dict(digests)}, indent=2, sort_keys=True) + "\n").encode()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse(data: bytes, manifest_sha256: str, served_digest: str, label: str) -> dict[str, str]:
    """The per-file digests of ``data``; refuse a manifest that does not match the version's tags."""
    if sha256_bytes(data) != manifest_sha256:
        raise TamperedArtifactError(
            f"{label}: {MANIFEST_FILE} differs from the manifest.sha256 recorded at registration; "
            "someone edited the artifact store. Re-register the version from a clean `dvc repro`."
        )
    try:
        files = Manifest.model_validate_json(data).files
    except ValidationError as exc:
        raise TamperedArtifactError(f"{label}: {MANIFEST_FILE} is not a manifest: {exc}") from exc
    for path in files:
        if path.startswith("/") or posixpath.normpath(path) != path or path.startswith(".."):
            raise TamperedArtifactError(f"{label}: {MANIFEST_FILE} names a path outside the artifact: {path!r}")
    if manifest_digest(files) != served_digest:
        raise TamperedArtifactError(
            f"{label}: {MANIFEST_FILE} lists other files than validation served (validation.served_digest "
            f"{served_digest}, manifest {manifest_digest(files)}); someone edited the tags"
        )
    return files


def all_files(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, bytecode included: anything not in the manifest is refused."""
    return {
        # A link never matches a digest: the manifest lists regular files only.
        path.relative_to(root).as_posix(): "symlink" if path.is_symlink() else sha256_file(path)
        for path in sorted(root.rglob("*"))
        if path.is_symlink() or path.is_file()
    }


def verify(root: Path, expected: Mapping[str, str], location: str) -> None:
    """Raise TamperedArtifactError naming each file under ``root`` that differs from ``expected``."""
    actual = all_files(root)
    problems = [
        f"{location}/{path}: {why}"
        for path, why in (
            *((p, "modified (sha256 differs)") for p in sorted(expected) if p in actual and actual[p] != expected[p]),
            *((p, "missing") for p in sorted(expected) if p not in actual),
            *((p, "unexpected file") for p in sorted(actual) if p not in expected),
        )
    ]
    if problems:
        raise TamperedArtifactError(
            "refusing to serve a tampered artifact: "
            + "; ".join(problems)
            + ". Re-register the version from a clean `dvc repro` instead of editing the artifact store."
        )
