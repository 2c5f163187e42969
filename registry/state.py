"""The rollout state as the registry holds it: what serves, what MLflow's aliases say, and lineage tags.

What serves (champion, canary, candidate, previous champion, canary weight, generation) is one JSON
tag on the registered model, ``rollout.state``, written only by ``registry.rollout.transact``. The
gateways route by it, the controller loads what it names and ``registry status`` reports it, so all
three act on the same change at the same moment (one tag write is atomic; several alias writes are
not). MLflow's aliases and the ``rollout.canary_weight`` tag are what a person sees and edits in the
MLflow UI: the project's actions move them together with the state tag, and an edit made anywhere
else shows as an outside change (``RolloutState.outside_changes``) until the controller adopts it or
puts it back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, ConfigDict

from registry.errors import NotFoundError
from registry.store import DOES_NOT_EXIST, Store, error_code

Alias = Literal["candidate", "canary", "champion", "previous-champion"]
ALIASES: tuple[Alias, ...] = ("champion", "canary", "candidate", "previous-champion")

# Registered-model tags. STATE_TAG is what serves (see the module docstring); WEIGHT_TAG is the
# canary weight as a person reads and edits it; GENERATION_TAG repeats the state's generation for
# a person reading the tags (read only to tell a removed state tag from a model no action touched).
STATE_TAG = "rollout.state"
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


@dataclass(frozen=True)
class OutsideChange:
    """One alias (or ``weight``, the weight tag) whose MLflow value differs from what serves."""

    key: str
    serving: int | None
    #: The alias's version in MLflow, or the weight tag's text (None: removed).
    mlflow: int | str | None

    def describe(self) -> str:
        if self.key == WEIGHT_KEY:
            shown = "removed" if self.mlflow is None else f"{self.mlflow!r}"
            return f"canary weight tag {shown} in MLflow, {self.serving}% serving"
        now = "removed" if self.mlflow is None else f"v{self.mlflow}"
        was = "none" if self.serving is None else f"v{self.serving}"
        return f"{self.key} {now} in MLflow, {was} serving"


WEIGHT_KEY = "weight"


class RolloutState(BaseModel):
    """What serves (``aliases``, ``canary_weight``, ``generation``), paused, and MLflow's own view.

    ``generation`` counts applied actions; every action bumps it, so equal generations mean nothing
    moved. ``mlflow_aliases`` and ``mlflow_weight`` (the weight tag's text) are MLflow's aliases and
    tag as read with the state; None means "the same as what serves" (as a fake or an old reader has it).
    """

    model_config = ConfigDict(frozen=True)

    model: str
    aliases: dict[str, int]
    canary_weight: int
    generation: int
    paused: bool = False
    last_event: str | None = None
    mlflow_aliases: dict[str, int] | None = None
    mlflow_weight: str | None = None
    #: False while the model has no rollout.state tag yet (what serves is read from the aliases).
    recorded: bool = True
    #: Why rollout.state cannot be used (edited or removed by hand); then ``aliases`` are MLflow's.
    damaged: str | None = None
    #: Set by ``registry.rollout`` on a damaged state it rebuilt: where what serves was taken from.
    restored_from: str | None = None

    def version_of(self, alias: Alias) -> int | None:
        return self.aliases.get(alias)

    def describe(self) -> str:
        parts = [f"{alias}=v{self.aliases[alias]}" for alias in ALIASES if alias in self.aliases]
        return ", ".join([*parts, f"canary weight {self.canary_weight}%", *(["paused"] if self.paused else [])])

    def outside_changes(self) -> tuple[OutsideChange, ...]:
        """What MLflow shows differently from what serves: aliases first (in ALIASES order), then the weight."""
        if self.mlflow_aliases is None or not self.recorded or self.damaged is not None:
            return ()  # nothing recorded to differ from (``damaged`` says so on its own)
        live = self.mlflow_aliases
        found = [
            OutsideChange(alias, self.aliases.get(alias), live.get(alias))
            for alias in ALIASES
            if self.aliases.get(alias) != live.get(alias)
        ]
        # No weight tag at weight 0 is a model that never had a canary: nothing to tell apart.
        unset = self.mlflow_weight is None and self.canary_weight == 0
        if not unset and self.mlflow_weight != str(self.canary_weight):
            found.append(OutsideChange(WEIGHT_KEY, self.canary_weight, self.mlflow_weight))
        return tuple(found)

    def describe_outside(self) -> str:
        return "; ".join(change.describe() for change in self.outside_changes())


def state_tag(model: str, aliases: Mapping[str, int], canary_weight: int, generation: int) -> str:
    """The ``rollout.state`` tag's text: sorted JSON with a check over the model name and the rest.

    The check is no secret (anyone can compute it): it makes a hand edit of the tag in the MLflow UI
    an unreadable state that readers refuse, rather than a split they would follow.
    """
    body = {"aliases": dict(sorted(aliases.items())), "canary_weight": canary_weight, "generation": generation}
    return json.dumps({**body, "check": _check(model, body)}, sort_keys=True)


def parse_state_tag(model: str, text: str) -> tuple[dict[str, int], int, int]:
    """(aliases, canary weight, generation) of a ``rollout.state`` tag; ValueError says what is wrong."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{STATE_TAG} is not JSON ({exc})") from None
    if not isinstance(raw, dict) or set(raw) != {"aliases", "canary_weight", "generation", "check"}:
        raise ValueError(f"{STATE_TAG} does not hold aliases, canary_weight, generation and check")
    body = {key: raw[key] for key in ("aliases", "canary_weight", "generation")}
    if raw["check"] != _check(model, body):
        raise ValueError(f"{STATE_TAG} does not match its check (edited by hand?)")
    aliases, weight, generation = body["aliases"], body["canary_weight"], body["generation"]
    if not isinstance(aliases, dict) or not all(
        alias in ALIASES and _whole(version) and version > 0 for alias, version in aliases.items()
    ):
        raise ValueError(f"{STATE_TAG}: aliases {aliases!r} are not {'/'.join(ALIASES)} -> version")
    if not (_whole(weight) and 0 <= weight <= 100 and _whole(generation) and generation >= 0):
        raise ValueError(f"{STATE_TAG}: weight {weight!r} or generation {generation!r} out of range")
    return dict(aliases), weight, generation


def _check(model: str, body: Mapping[str, object]) -> str:
    return hashlib.sha256(f"{model}\n{json.dumps(body, sort_keys=True)}".encode()).hexdigest()[:16]


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_state(store: Store) -> RolloutState:
    """One direct lookup of the registered model: what serves, MLflow's aliases and tags, in a single answer."""
    try:
        registered = store.client.get_registered_model(store.model)
    except MlflowException as exc:
        if error_code(exc) == DOES_NOT_EXIST:
            raise store.missing_model() from exc
        raise
    tags = registered.tags or {}
    live = {alias: int(version) for alias, version in (registered.aliases or {}).items()}
    weight_text = tags.get(WEIGHT_TAG)
    # Until the state tag is readable, what serves is taken to be MLflow's aliases (see ``damaged``).
    aliases, weight, generation = live, _as_int(weight_text) or 0, _as_int(tags.get(GENERATION_TAG)) or 0
    recorded, damaged = STATE_TAG in tags, None
    if recorded:
        try:
            aliases, weight, generation = parse_state_tag(store.model, tags[STATE_TAG])
        except ValueError as exc:
            damaged = str(exc)
    elif generation:
        # Generation 0: no action has run yet, so what serves is the aliases. Later the tag was
        # removed by hand, or the store predates it: the next action restores it from the history.
        damaged = f"{STATE_TAG} is missing at generation {generation}"
    return RolloutState(
        model=store.model,
        aliases=aliases,
        canary_weight=weight,
        generation=generation,
        paused=tags.get(PAUSED_TAG) == "true",
        last_event=tags.get(LAST_EVENT_TAG),
        mlflow_aliases=live,
        mlflow_weight=weight_text,
        recorded=recorded,
        damaged=damaged,
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
