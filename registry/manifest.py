"""Artifact checksums: sha256 per file, recorded as model-version tags, verified before serving."""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Mapping
from pathlib import Path

from registry.errors import TamperedArtifactError, UpstreamError

FILE_TAG_PREFIX = "sha256:"
MANIFEST_TAG = "manifest.sha256"
# MLflow tag keys allow only these characters (mlflow.utils.validation).
_TAG_SAFE = re.compile(r"^[/\w.\- ]+$")
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tree_digests(root: Path, prefix: str = "") -> dict[str, str]:
    """sha256 of every file under ``root``, keyed by ``prefix`` + its POSIX path relative to ``root``."""
    return {
        prefix + path.relative_to(root).as_posix(): sha256_file(path)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def manifest_digest(digests: Mapping[str, str]) -> str:
    """One digest over the whole manifest, in ``sha256sum`` line format, sorted by path."""
    lines = "".join(f"{digests[path]}  {path}\n" for path in sorted(digests))
    return hashlib.sha256(lines.encode()).hexdigest()


def to_tags(digests: Mapping[str, str]) -> dict[str, str]:
    """Model-version tags: one ``sha256:<path>`` per file plus the manifest digest."""
    for path in digests:
        if not _TAG_SAFE.match(path) or posixpath.normpath(path) != path:
            raise UpstreamError(
                f"artifact file {path!r}: its name cannot be an MLflow tag key; "
                "rename it to letters, digits, '_', '.', '-', '/' and spaces only"
            )
    tags = {FILE_TAG_PREFIX + path: digest for path, digest in digests.items()}
    tags[MANIFEST_TAG] = manifest_digest(digests)
    return tags


def from_tags(tags: Mapping[str, str], label: str) -> dict[str, str]:
    """The recorded per-file digests; refuse when the tags disagree with their own manifest digest."""
    digests = {key.removeprefix(FILE_TAG_PREFIX): v for key, v in tags.items() if key.startswith(FILE_TAG_PREFIX)}
    recorded = tags.get(MANIFEST_TAG)
    if not digests or recorded is None:
        raise TamperedArtifactError(f"{label}: no checksums recorded; it was not registered by this pipeline")
    if manifest_digest(digests) != recorded:
        raise TamperedArtifactError(
            f"{label}: the per-file checksum tags do not match {MANIFEST_TAG}; someone edited the tags"
        )
    return digests


def verify(root: Path, expected: Mapping[str, str], location: str) -> None:
    """Raise TamperedArtifactError naming each file under ``root`` that differs from ``expected``."""
    actual = tree_digests(root)
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
