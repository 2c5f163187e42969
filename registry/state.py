"""The rollout state as the registry holds it: aliases, canary weight, generation, and lineage tags."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, ConfigDict

from registry.errors import NotFoundError
from registry.store import DOES_NOT_EXIST, Store, error_code

Alias = Literal["candidate", "canary", "champion", "previous-champion"]
ALIASES: tuple[Alias, ...] = ("champion", "canary", "candidate", "previous-champion")

# Registered-model tags: the rollout state gateways and the controller reconcile from.
WEIGHT_TAG = "rollout.canary_weight"
GENERATION_TAG = "rollout.generation"
LAST_EVENT_TAG = "rollout.last_event"
PAUSED_TAG = "rollout.paused"

# Model-version tags written at registration (registry.publish): the lineage a person reads on the
# version page. Per-file checksums live in the run's manifest.json artifact, not here.
TAG_COMMIT = "git.commit"
TAG_DIRTY = "git.dirty"
TAG_DVC_LOCK = "dvc.lock.sha256"
TAG_PARAMS = "params.sha256"
TAG_QUANTIZATION = "quantize.method"
TAG_ACCURACY = "validation.accuracy"
TAG_DROP = "validation.drop"
TAG_SIZE = "package.bytes"
TAG_TRITON_MODEL = "triton.model"
#: manifest_digest of the files validate served (metrics/validate.json's served_digest).
TAG_SERVED_DIGEST = "validation.served_digest"
#: sha256 of the manifest.json artifact's bytes: ties that file to this record.
TAG_MANIFEST = "manifest.sha256"
VERSION_TAGS = (
    TAG_COMMIT,
    TAG_DIRTY,
    TAG_DVC_LOCK,
    TAG_PARAMS,
    TAG_QUANTIZATION,
    TAG_ACCURACY,
    TAG_DROP,
    TAG_SIZE,
    TAG_TRITON_MODEL,
    TAG_SERVED_DIGEST,
    TAG_MANIFEST,
)
#: Set on a version when it is rolled back: when, by whom, and why.
ROLLED_BACK_TAG = "rollout.rolled_back"


class VersionInfo(BaseModel):
    """One registered version with the lineage a person needs to trust it."""

    model_config = ConfigDict(frozen=True)

    version: int
    run_id: str | None
    source: str
    commit: str | None
    dirty: bool | None
    dvc_lock_sha256: str | None
    params_sha256: str | None
    quantization: str | None
    accuracy: float | None
    drop: float | None
    size_bytes: int | None
    triton_model: str | None
    served_digest: str | None
    manifest_sha256: str | None
    rolled_back: str | None
    tags: dict[str, str]

    @classmethod
    def from_mlflow(cls, mv: ModelVersion) -> VersionInfo:
        tags: Mapping[str, str] = mv.tags or {}
        return cls(
            version=int(mv.version),
            run_id=mv.run_id or None,
            source=str(mv.source),
            commit=tags.get(TAG_COMMIT),
            dirty=_as_bool(tags.get(TAG_DIRTY)),
            dvc_lock_sha256=tags.get(TAG_DVC_LOCK),
            params_sha256=tags.get(TAG_PARAMS),
            quantization=tags.get(TAG_QUANTIZATION),
            accuracy=_as_float(tags.get(TAG_ACCURACY)),
            drop=_as_float(tags.get(TAG_DROP)),
            size_bytes=_as_int(tags.get(TAG_SIZE)),
            triton_model=tags.get(TAG_TRITON_MODEL),
            served_digest=tags.get(TAG_SERVED_DIGEST),
            manifest_sha256=tags.get(TAG_MANIFEST),
            rolled_back=tags.get(ROLLED_BACK_TAG),
            tags=dict(tags),
        )


class RolloutState(BaseModel):
    """Champion, canary, candidate and previous champion, canary weight (percent), paused, generation.

    ``generation`` counts applied actions; every action bumps it, so equal generations mean nothing moved.
    """

    model_config = ConfigDict(frozen=True)

    model: str
    aliases: dict[str, int]
    canary_weight: int
    generation: int
    paused: bool = False
    last_event: str | None = None

    def version_of(self, alias: Alias) -> int | None:
        return self.aliases.get(alias)

    def describe(self) -> str:
        parts = [f"{alias}=v{self.aliases[alias]}" for alias in ALIASES if alias in self.aliases]
        return ", ".join([*parts, f"canary weight {self.canary_weight}%", *(["paused"] if self.paused else [])])


def read_state(store: Store) -> RolloutState:
    """One direct lookup of the registered model: its aliases and rollout tags in a single answer."""
    try:
        registered = store.client.get_registered_model(store.model)
    except MlflowException as exc:
        if error_code(exc) == DOES_NOT_EXIST:
            raise store.missing_model() from exc
        raise
    tags = registered.tags or {}
    return RolloutState(
        model=store.model,
        aliases={alias: int(version) for alias, version in (registered.aliases or {}).items()},
        canary_weight=_as_int(tags.get(WEIGHT_TAG)) or 0,
        generation=_as_int(tags.get(GENERATION_TAG)) or 0,
        paused=tags.get(PAUSED_TAG) == "true",
        last_event=tags.get(LAST_EVENT_TAG),
    )


def resolve(store: Store, alias: Alias, state: RolloutState | None = None) -> VersionInfo | None:
    """The version holding ``alias`` in ``state`` (read now if not given), or None when nobody holds it.

    The alias map comes with the registered model, so a missing alias needs no error at all, and a
    missing model or version is told apart by MLflow's error code (RESOURCE_DOES_NOT_EXIST).
    """
    current = state if state is not None else read_state(store)
    version = current.aliases.get(alias)
    return None if version is None else get_version(store, version)


def get_version(store: Store, version: int) -> VersionInfo:
    try:
        return VersionInfo.from_mlflow(store.client.get_model_version(store.model, str(version)))
    except MlflowException as exc:
        if error_code(exc) == DOES_NOT_EXIST:
            raise NotFoundError(f"{store.model} v{version} does not exist in {store.where}") from exc
        raise


def _as_float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _as_int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _as_bool(value: str | None) -> bool | None:
    return None if value is None else value.lower() == "true"
