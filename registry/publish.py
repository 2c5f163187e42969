"""Register one validated Triton model build: an MLflow run with its lineage, then a model version.

The run's artifacts::

    manifest.json           sha256 per file below (registry.manifest), verified before serving
    model/config.pbtxt      the Triton model config as packaged
    model/warmup/...        any other model-level file the config refers to
    model/version/...       the Triton version folder (model.py and weights); never bytecode
    model/MLmodel           the tensor contract as an MLflow signature, for the UI only (never served)

``model/`` is the model version's source. The run also carries what MLflow's UI shows in its own
places: the stages' figures as metrics, the golden set as its evaluation dataset, and a description
in words. Registering is idempotent: a version with the same served digest and params digest is
found by its tags and made the candidate again, never duplicated.
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from pydantic import BaseModel, ConfigDict

from core.manifest import VERSION_KEY, manifest_digest, model_digests
from core.names import served_model_name
from core.wording import accuracy_words
from registry import manifest, rollout, state
from registry.card import (
    MLMODEL_FILE,
    EvaluationSet,
    Signature,
    log_evaluation_set,
    model_description,
    write_mlmodel,
)
from registry.errors import ConcurrentChangeError, NotValidatedError, UpstreamError
from registry.events import Actor, now
from registry.state import read_state
from registry.store import ALREADY_EXISTS, Store, error_code

log = logging.getLogger(__name__)

_UNSAFE_KEY = re.compile(r"[^\w./: -]")
ARTIFACT_DIR = "model"
#: The run artifact folder holding the golden set the build was validated on (the controller probes with it).
GOLDEN_ARTIFACT = "golden"
VERSION_DIR = VERSION_KEY
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

    #: The packaged folder's name and version (``qwen3-vl-v1``, ``1``), for the run's lineage.
    package_model: str
    package_version: str
    model_dir: Path
    version_dir: Path
    #: sha256 per file as core.manifest.model_digests keys them; what gets uploaded, exactly.
    files: dict[str, str]
    served_digest: str
    size_bytes: int
    quantization: str
    lineage: Lineage
    validation: Validation
    params: dict[str, str]
    metrics: dict[str, float]
    signature: Signature | None = None
    evaluation: EvaluationSet | None = None


class Registration(BaseModel):
    """What register.json records (the fields that are the same wherever it runs), plus the run."""

    registered_model: str
    version: int
    alias: str
    served_digest: str
    run_id: str | None
    source: str


def check_model_dir(model_dir: Path) -> None:
    """The packaged folder has a config and no model-level entry that would collide with ``version/``."""
    if not (model_dir / CONFIG).is_file():
        raise UpstreamError(f"{model_dir / CONFIG}: not found; the package stage writes it")
    if (model_dir / VERSION_DIR).exists():
        raise UpstreamError(f"{model_dir / VERSION_DIR}: this name is reserved for the version folder")
    if (model_dir / MLMODEL_FILE).exists():
        raise UpstreamError(f"{model_dir / MLMODEL_FILE}: this name is reserved for the version's MLflow signature")


def version_tags(candidate: Candidate, manifest_sha256: str) -> dict[str, str]:
    """The tags a person reads on the version page, but ``triton.model``: the served name holds the
    version's number, known once the version exists (``_name_served_model``)."""
    lineage = candidate.lineage
    return {
        state.TAG_COMMIT: lineage.commit,
        state.TAG_DIRTY: str(lineage.dirty).lower(),
        state.TAG_DVC_LOCK: lineage.dvc_lock_sha256,
        state.TAG_PARAMS: lineage.params_sha256,
        state.TAG_QUANTIZATION: candidate.quantization,
        state.TAG_ACCURACY: repr(candidate.validation.accuracy),
        state.TAG_DROP: repr(candidate.validation.drop),
        state.TAG_SIZE: str(candidate.size_bytes),
        state.TAG_SERVED_DIGEST: candidate.served_digest,
        state.TAG_MANIFEST: manifest_sha256,
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


def describe_version(candidate: Candidate) -> str:
    """The version's description: what a person asks first, in words (Markdown-safe)."""
    validation, lineage = candidate.validation, candidate.lineage
    dirty = " (uncommitted changes)" if lineage.dirty else ""
    golden = candidate.evaluation
    questions = golden.profile.get("questions") if golden is not None else None
    judged = f" on the golden set ({questions} question{'s' if questions != 1 else ''})" if questions else ""
    return (
        f"Build {candidate.package_model}, {candidate.quantization}: "
        f"{accuracy_words(validation.accuracy, validation.drop)}{judged}. "
        f"{candidate.size_bytes:,} bytes; commit {lineage.commit[:12]}{dirty}. "
        f"Every stage's figures are the source run's metrics; per-file sha256 in its {manifest.MANIFEST_FILE}."
    )


def _local(candidate: Candidate, key: str) -> Path:
    """The packaged file behind a manifest key (``version/...`` is the numbered version folder)."""
    head, _, rest = key.partition("/")
    return candidate.version_dir / rest if head == VERSION_DIR and rest else candidate.model_dir / key


def _upload(store: Store, run_id: str, artifact_uri: str, candidate: Candidate, manifest_bytes: bytes) -> None:
    """Exactly the manifest's files, one by one (a folder upload would take bytecode along), the
    signature's MLmodel, then the manifest."""
    for key in sorted(candidate.files):
        folder = f"{ARTIFACT_DIR}/{key}".rpartition("/")[0]
        store.upload_file(artifact_uri, _local(candidate, key), folder)
    with tempfile.TemporaryDirectory(prefix="register-manifest-") as tmp:
        if candidate.signature is not None:
            mlmodel = write_mlmodel(run_id, ARTIFACT_DIR, candidate.signature, Path(tmp))
            store.upload_file(artifact_uri, mlmodel, ARTIFACT_DIR)
        path = Path(tmp) / manifest.MANIFEST_FILE
        path.write_bytes(manifest_bytes)
        store.upload_file(artifact_uri, path, None)


def _ensure_registered_model(store: Store) -> None:
    description = model_description(store.model)
    try:
        store.client.create_registered_model(store.model, description=description)
        return
    except MlflowException as exc:
        if error_code(exc) != ALREADY_EXISTS:
            raise
    # A store from an earlier release keeps the description it was created with; this one is current.
    if store.client.get_registered_model(store.model).description != description:
        store.client.update_registered_model(store.model, description=description)


def _name_served_model(store: Store, version: ModelVersion) -> None:
    """Tag the version with the Triton model that serves it (``qwen3-vl-v1``), once its number exists."""
    served = served_model_name(store.model, int(version.version))
    if (version.tags or {}).get(state.TAG_TRITON_MODEL) != served:
        store.client.set_model_version_tag(store.model, str(version.version), state.TAG_TRITON_MODEL, served)


def find_registered(store: Store, candidate: Candidate) -> ModelVersion | None:
    """A version already registered from these files and params (a rerun, or a run that failed after it)."""
    query = (
        f"name = '{store.model}' AND tags.`{state.TAG_SERVED_DIGEST}` = '{candidate.served_digest}' "
        f"AND tags.`{state.TAG_PARAMS}` = '{candidate.lineage.params_sha256}'"
    )
    found = store.client.search_model_versions(query)
    return max(found, key=lambda mv: int(mv.version)) if found else None


def _create_version(store: Store, candidate: Candidate, actor: Actor) -> ModelVersion:
    """Log the run with its artifacts and manifest, then create the model version."""
    manifest_bytes = manifest.to_bytes(candidate.files)
    tags = version_tags(candidate, manifest.sha256_bytes(manifest_bytes))
    description = describe_version(candidate)
    run_tags = {
        **tags,
        "mlflow.source.git.commit": candidate.lineage.commit,
        MLFLOW_RUN_NOTE: description,
        "package.model": candidate.package_model,
        "package.version": candidate.package_version,
    }
    experiment_id = store.experiment_id(store.settings.experiment)
    run = store.client.create_run(
        experiment_id, run_name=f"register {candidate.package_model} ({candidate.quantization})"
    )
    run_id = run.info.run_id
    try:
        _log_run_data(store, run_id, candidate, run_tags)
        if candidate.evaluation is not None:
            log_evaluation_set(store, run_id, candidate.evaluation)
            # The files too: the rollout controller probes canaries with the set their champion passed.
            store.upload_dir(run.info.artifact_uri, Path(candidate.evaluation.source), GOLDEN_ARTIFACT)
        _upload(store, run_id, run.info.artifact_uri, candidate, manifest_bytes)
        if model_digests(candidate.model_dir, candidate.version_dir.name) != candidate.files:
            raise NotValidatedError(
                f"{candidate.model_dir} changed while it was being uploaded; nothing was registered. "
                "Rerun `dvc repro` so validate judges the files that get registered."
            )
    except BaseException:
        store.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    store.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    _ensure_registered_model(store)
    return store.client.create_model_version(
        store.model, source=f"{run.info.artifact_uri}/{ARTIFACT_DIR}", run_id=run_id, tags=tags, description=description
    )


def _make_candidate(store: Store, actor: Actor, number: int, again: bool) -> str:
    """Give ``number`` the candidate alias unless it is already serving; return the alias it holds."""
    held = {alias for alias, version in read_state(store).aliases.items() if version == number}
    for alias in ("champion", "canary", CANDIDATE):
        if alias in held:
            log.info("%s v%d is already the %s; left as it is", store.model, number, alias)
            return alias
    try:
        rollout.mark_candidate(store, actor, number, again=again)
    except ConcurrentChangeError as exc:
        raise ConcurrentChangeError(
            f"{store.model} v{number} is registered but not yet the candidate: {exc}. "
            "Rerunning the register stage finds the version and finishes the job."
        ) from exc
    return CANDIDATE


def publish(store: Store, candidate: Candidate, actor: Actor) -> Registration:
    """Log the run and artifacts, create the model version (unless one exists for these inputs), alias it."""
    if not candidate.validation.passed:
        raise NotValidatedError(
            f"{candidate.package_model} did not pass validation: {candidate.validation.reason}. "
            "Nothing was registered; fix the cause and rerun `dvc repro`."
        )
    if manifest_digest(candidate.files) != candidate.served_digest:
        raise NotValidatedError(
            f"{candidate.model_dir}: its files (digest {manifest_digest(candidate.files)}) are not the ones "
            f"validate served (served_digest {candidate.served_digest}); rerun `dvc repro`"
        )
    check_model_dir(candidate.model_dir)
    existing = find_registered(store, candidate)
    version = existing if existing is not None else _create_version(store, candidate, actor)
    # Also on a rerun: a run that died right after creating the version left it unnamed.
    _name_served_model(store, version)
    number = int(version.version)
    if existing is not None:
        log.info("%s v%d already holds these files and params; not registering a duplicate", store.model, number)
    alias = _make_candidate(store, actor, number, again=existing is not None)
    log.info("registered %s v%d (run %s): %s", store.model, number, version.run_id, alias)
    return Registration(
        registered_model=store.model,
        version=number,
        alias=alias,
        served_digest=candidate.served_digest,
        run_id=version.run_id or None,
        source=str(version.source),
    )
