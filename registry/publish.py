"""Register one validated Triton model version: an MLflow run with its lineage, then a model version.

Layout of the run's ``model/`` artifact (the model version's source)::

    model/config.pbtxt      the Triton model config as packaged
    model/warmup/...        any other model-level file the config refers to (not other versions)
    model/version/...       the Triton version folder (model.py and weights)

``registry.materialize`` renames ``version/`` to the MLflow version number when it serves it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, ConfigDict

from registry import manifest, rollout, state
from registry.errors import ConcurrentChangeError, NotValidatedError, UpstreamError
from registry.events import Actor, now
from registry.store import ALREADY_EXISTS, Store, error_code

log = logging.getLogger(__name__)

_UNSAFE_KEY = re.compile(r"[^\w./: -]")
ARTIFACT_DIR = "model"
VERSION_DIR = "version"
CONFIG = "config.pbtxt"
CANDIDATE = "candidate"


class Lineage(BaseModel):
    model_config = ConfigDict(frozen=True)

    commit: str
    dirty: bool
    dvc_lock_sha256: str
    params_sha256: str


class Validation(BaseModel):
    model_config = ConfigDict(frozen=True)

    passed: bool
    accuracy: float
    drop: float
    reason: str


class Candidate(BaseModel):
    """Everything the register stage hands to the registry."""

    model_config = ConfigDict(frozen=True)

    triton_model: str
    package_version: str
    model_dir: Path
    version_dir: Path
    size_bytes: int
    quantization: str
    lineage: Lineage
    validation: Validation
    params: dict[str, str]
    metrics: dict[str, float]


class Registration(BaseModel):
    registered_model: str
    version: int
    run_id: str
    alias: str
    source: str


def model_level_entries(model_dir: Path) -> list[Path]:
    """The model folder's own files (config.pbtxt, warmup/): not version folders, not dot-staging."""
    entries = [p for p in sorted(model_dir.iterdir()) if not p.name.isdigit() and not p.name.startswith(".")]
    if not any(p.name == CONFIG for p in entries):
        raise UpstreamError(f"{model_dir / CONFIG}: not found; the package stage writes it")
    if any(p.name == VERSION_DIR for p in entries):
        raise UpstreamError(f"{model_dir / VERSION_DIR}: this name is reserved for the version folder")
    return entries


def _run_tags(candidate: Candidate) -> dict[str, str]:
    lineage = candidate.lineage
    return {
        state.TAG_COMMIT: lineage.commit,
        "mlflow.source.git.commit": lineage.commit,
        state.TAG_DIRTY: str(lineage.dirty).lower(),
        state.TAG_DVC_LOCK: lineage.dvc_lock_sha256,
        state.TAG_PARAMS: lineage.params_sha256,
        state.TAG_QUANTIZATION: candidate.quantization,
        state.TAG_PASSED: str(candidate.validation.passed).lower(),
        state.TAG_ACCURACY: repr(candidate.validation.accuracy),
        state.TAG_DROP: repr(candidate.validation.drop),
        state.TAG_SIZE: str(candidate.size_bytes),
        state.TAG_TRITON_MODEL: candidate.triton_model,
        "package.version": candidate.package_version,
    }


def _key(name: str) -> str:
    """MLflow accepts letters, digits, ``_ - . / :`` and spaces in keys; anything else becomes ``_``."""
    return _UNSAFE_KEY.sub("_", name)


def _log_run_data(store: Store, run_id: str, candidate: Candidate, tags: dict[str, str]) -> None:
    timestamp = int(now().timestamp() * 1000)
    params = [Param(_key(k), v) for k, v in sorted(candidate.params.items())]
    metrics = [Metric(_key(k), v, timestamp, 0) for k, v in sorted(candidate.metrics.items())]
    run_tags = [RunTag(k, v) for k, v in sorted(tags.items())]
    # log_batch caps each call at 100 params, 100 tags and 1000 metrics.
    for start in range(0, max(len(params), len(run_tags), 1), 100):
        store.client.log_batch(run_id, params=params[start : start + 100], tags=run_tags[start : start + 100])
    for start in range(0, len(metrics), 1000):
        store.client.log_batch(run_id, metrics=metrics[start : start + 1000])


def _digests(candidate: Candidate, shared: list[Path]) -> dict[str, str]:
    """sha256 per file, keyed by its path under the artifact's ``model/`` folder."""
    digests = manifest.tree_digests(candidate.version_dir, prefix=f"{VERSION_DIR}/")
    for entry in shared:
        if entry.is_dir():
            digests.update(manifest.tree_digests(entry, prefix=f"{entry.name}/"))
        else:
            digests[entry.name] = manifest.sha256_file(entry)
    return digests


def _upload(store: Store, artifact_uri: str, candidate: Candidate, shared: list[Path]) -> None:
    for entry in shared:
        if entry.is_dir():
            store.upload_dir(artifact_uri, entry, f"{ARTIFACT_DIR}/{entry.name}")
        else:
            store.upload_file(artifact_uri, entry, ARTIFACT_DIR)
    store.upload_dir(artifact_uri, candidate.version_dir, f"{ARTIFACT_DIR}/{VERSION_DIR}")


def _ensure_registered_model(store: Store) -> None:
    try:
        store.client.create_registered_model(
            store.model,
            description="Qwen3-VL Triton model repository versions. Aliases: candidate (validated), "
            "canary (taking a share of traffic), champion (taking the rest), previous-champion.",
        )
    except MlflowException as exc:
        if error_code(exc) != ALREADY_EXISTS:
            raise


def publish(store: Store, candidate: Candidate, actor: Actor) -> Registration:
    """Log the run and artifacts, create the model version, tag it, and make it the candidate."""
    if not candidate.validation.passed:
        raise NotValidatedError(
            f"{candidate.triton_model} (package version {candidate.package_version}) did not pass "
            f"validation: {candidate.validation.reason}. Nothing was registered; fix the cause and "
            "rerun `dvc repro`."
        )
    shared = model_level_entries(candidate.model_dir)
    checksum_tags = manifest.to_tags(_digests(candidate, shared))  # refuses bad file names up front
    tags = _run_tags(candidate)
    experiment_id = store.experiment_id(store.settings.experiment)
    run = store.client.create_run(
        experiment_id, run_name=f"register {candidate.triton_model} ({candidate.quantization})"
    )
    run_id = run.info.run_id
    try:
        _log_run_data(store, run_id, candidate, tags)
        _upload(store, run.info.artifact_uri, candidate, shared)
    except BaseException:
        store.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    store.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))

    source = f"{run.info.artifact_uri}/{ARTIFACT_DIR}"
    _ensure_registered_model(store)
    version = store.client.create_model_version(
        store.model,
        source=source,
        run_id=run_id,
        tags={**tags, **checksum_tags},
        description=(
            f"{candidate.triton_model} {candidate.quantization}: accuracy {candidate.validation.accuracy:.4f} "
            f"(drop {candidate.validation.drop:+.4f}), {candidate.size_bytes} bytes, "
            f"commit {candidate.lineage.commit[:12]}{' (dirty)' if candidate.lineage.dirty else ''}"
        ),
    )
    number = int(version.version)
    try:
        rollout.mark_candidate(store, actor, number)
    except ConcurrentChangeError as exc:
        raise ConcurrentChangeError(f"{store.model} v{number} is registered but not yet the candidate: {exc}") from exc
    log.info("registered %s v%d (run %s) as %s", store.model, number, run_id, CANDIDATE)
    return Registration(registered_model=store.model, version=number, run_id=run_id, alias=CANDIDATE, source=source)
