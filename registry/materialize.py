"""Materialize registered versions for serving: one verified folder per version, written atomically.

Each served version is its own Triton model (``core.names.served_model_name(model, N)``, which the
version's ``triton.model`` tag names), so a version materializes on its own:
``dest/{config.pbtxt, warmup/, version/}`` exactly as registered, every file checked against the
run's manifest.json, which is itself checked against the version's tags. The serving side turns
such a folder into a Triton model (``version/`` becomes ``N/``). The artifact's ``MLmodel`` (the
signature MLflow's UI shows) is not served and is left out.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from pydantic import BaseModel

from core.files import atomic_dir
from core.names import check_model_name, served_model_name
from registry import manifest
from registry.card import MLMODEL_FILE
from registry.errors import NotFoundError, RegistryError, TamperedArtifactError
from registry.publish import ARTIFACT_DIR
from registry.state import VersionInfo, get_version, read_state
from registry.store import Store

log = logging.getLogger(__name__)


class MaterializedVersion(BaseModel):
    version: int
    folder: Path
    #: The registered model, whose name the served Triton models derive from.
    triton_model: str
    #: The Triton model name that serves this version (``<triton_model>-v<version>``).
    served_model: str


class Materialized(BaseModel):
    """The answer of ``python -m registry materialize --json``."""

    out: Path
    champion: MaterializedVersion | None
    canary: MaterializedVersion | None


def _triton_model(store: Store, info: VersionInfo) -> str:
    """The Triton model that serves ``info``: ``<model>-v<N>``, the name the controller loads."""
    # The tag is unauthenticated: a path in it is refused outright, whatever else reads it.
    try:
        tag = check_model_name(info.triton_model or "", "Triton model name")
    except ValueError as exc:
        raise RegistryError(f"{store.model} v{info.version}: its triton.model tag is refused: {exc}") from exc
    served = served_model_name(store.model, info.version)
    # A version registered before the tag named the served model holds the bare model name.
    if tag not in (served, store.model):
        log.warning(
            "%s v%d: its triton.model tag says %r, but it is served as %s", store.model, info.version, tag, served
        )
    return served


def _run_root(info: VersionInfo, label: str) -> str:
    suffix = f"/{ARTIFACT_DIR}"
    if not info.source.endswith(suffix):
        raise TamperedArtifactError(f"{label}: source {info.source} is not a `{ARTIFACT_DIR}/` folder of a run")
    return info.source.removesuffix(suffix)


def _expected_files(store: Store, info: VersionInfo, scratch: Path) -> dict[str, str]:
    label = f"{store.model} v{info.version}"
    if not info.manifest_sha256 or not info.served_digest:
        raise TamperedArtifactError(
            f"{label}: no manifest.sha256 or validation.served_digest tag; it was not registered by this "
            "pipeline's register stage (`dvc repro`), so nothing vouches for its files"
        )
    raw = store.download_file(_run_root(info, label), manifest.MANIFEST_FILE, scratch).read_bytes()
    return manifest.parse(raw, info.manifest_sha256, info.served_digest, label)


def materialize_version(store: Store, version: int, dest: Path) -> Path:
    """Download ``version``'s artifact into ``dest`` (replaced whole) with every file verified; return it.

    Refuses (TamperedArtifactError) a modified, missing or unexpected file, or a manifest that does not
    match the version's tags; on any refusal ``dest`` is left exactly as it was.
    """
    info = get_version(store, version)
    _triton_model(store, info)
    dest = dest.absolute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.manifest-", dir=dest.parent) as scratch:
        expected = _expected_files(store, info, Path(scratch))
    # atomic_dir's temp sibling is removed on failure and replaces dest only once verified.
    with atomic_dir(dest) as tmp:
        store.download(info.source, tmp)
        descriptor = tmp / MLMODEL_FILE
        if descriptor.is_file() and not descriptor.is_symlink():
            descriptor.unlink()
        manifest.verify(tmp, expected, info.source)
    log.info("materialized %s v%d into %s (%d files verified)", store.model, version, dest, len(expected))
    return dest


def materialize_serving(store: Store, out: Path) -> Materialized:
    """``out/<N>/`` for the champion and for the canary, each verified; other folders are left alone."""
    state = read_state(store)
    found: dict[str, MaterializedVersion] = {}
    for alias in ("champion", "canary"):
        version = state.aliases.get(alias)
        if version is None:
            continue
        info = get_version(store, version)
        served = _triton_model(store, info)
        folder = materialize_version(store, version, out / str(version))
        found[alias] = MaterializedVersion(
            version=version, folder=folder, triton_model=store.model, served_model=served
        )
    if not found:
        raise NotFoundError(
            f"{store.model} has no champion or canary to serve (state: {state.describe()}); make the candidate the "
            "first champion with `python -m registry promote --to champion`"
        )
    return Materialized(out=out.absolute(), champion=found.get("champion"), canary=found.get("canary"))
