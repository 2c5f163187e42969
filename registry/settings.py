"""Where the registry lives: one settings class shared by the CLI, the register stage and the server."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml
from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core import ports
from core.names import PlainName

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
PARAMS_FILE = "params.yaml"


def _project_dir() -> Path:
    # The repository root (the folder holding this package), so every command finds the same
    # store wherever it is started from.
    return Path(__file__).resolve().parent.parent


def _experiment_copy(project_dir: Path, dvc_root: Path) -> Path | None:
    """The root of the DVC experiment copy ``project_dir`` lies in (its nearest folder holding ``.dvc/``
    under ``<dvc_root>/.dvc/tmp/exps/``), or None outside one."""
    exps, folder = (dvc_root / ".dvc" / "tmp" / "exps").resolve(), project_dir.resolve()
    if exps not in folder.parents:
        return None
    for candidate in (folder, *folder.parents):
        if candidate == exps:
            return None
        if (candidate / ".dvc").is_dir():
            return candidate
    return None


class RegistrySettings(BaseSettings):
    """MLflow location and names. Environment: ``REGISTRY_*``, plus ``MLFLOW_TRACKING_URI``."""

    # hide_input_in_errors: a store or tracking URI may carry a database password, and some callers print
    # the whole ValidationError.
    model_config = SettingsConfigDict(
        env_prefix="REGISTRY_", extra="ignore", populate_by_name=True, hide_input_in_errors=True
    )

    tracking_uri: str | None = Field(
        default=None, validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "REGISTRY_TRACKING_URI")
    )
    project_dir: Path = Field(default_factory=_project_dir)
    # Where the default store (.mlflow/) lives, when it is not the project folder (see store_root).
    store_dir: Path | None = None
    # Set by DVC for every stage: the repository's root; in `dvc exp run --temp` and queued runs,
    # the root of the repository the experiment copy was made from.
    dvc_root: Path | None = Field(default=None, validation_alias="DVC_ROOT")
    backend_store_uri: str | None = None
    artifacts_destination: Path | None = None
    host: str = ports.LOOPBACK
    allow_public_bind: bool = False
    port: int = Field(default=ports.DEFAULT.mlflow, ge=1, le=65535)
    # Default: the `registry` group of the project's params.yaml, the one place these names live.
    model_name: PlainName
    experiment: PlainName
    health_attempts: int = Field(default=60, ge=1)
    health_interval_s: float = Field(default=0.5, gt=0)
    # Seconds a rollout action's lock outlives its last renewal (renewed every third of it): how long
    # an action that died blocks the next one.
    lock_ttl_s: float = Field(default=20.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _names_from_params(cls, data: Any) -> Any:
        if not isinstance(data, dict) or ("model_name" in data and "experiment" in data):
            return data
        params = Path(data.get("project_dir") or _project_dir()) / PARAMS_FILE
        try:
            group = (yaml.safe_load(params.read_text()) or {}).get("registry") or {}
        except (OSError, yaml.YAMLError):
            group = {}
        return {**{k: v for k, v in group.items() if k in ("model_name", "experiment")}, **data}

    @field_validator("tracking_uri", "backend_store_uri")
    @classmethod
    def _postgresql_driver_installed(cls, value: str | None) -> str | None:
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; the project installs psycopg2, so the
        # server would die at start with "No module named 'psycopg'". (The URI may hold a password: not echoed.)
        if value and urlparse(value).scheme == "postgresql" and importlib.util.find_spec("psycopg") is None:
            raise ValueError(
                "a postgresql:// URI makes SQLAlchemy load the psycopg (3) driver, which is not installed; "
                "name the installed driver instead: postgresql+psycopg2://USER:PASSWORD@HOST:5432/DATABASE"
            )
        return value

    @model_validator(mode="after")
    def _loopback_unless_allowed(self) -> RegistrySettings:
        if self.host not in _LOOPBACK and not self.allow_public_bind:
            raise ValueError(
                f"host {self.host!r}: `mlflow server` has no authentication, so anyone who reaches it can "
                "promote or roll back versions. Keep 127.0.0.1, or put it behind an authenticating proxy "
                "and set REGISTRY_ALLOW_PUBLIC_BIND=true"
            )
        return self

    @property
    def store_uri(self) -> str:
        """The sqlite store the embedded default and ``make mlflow`` share."""
        if self.backend_store_uri:
            return self.backend_store_uri
        return f"sqlite:///{self.store_root / '.mlflow' / 'mlflow.db'}"

    @property
    def artifacts_dir(self) -> Path:
        """Where artifacts live on disk, for the server and for the embedded default."""
        return self.artifacts_destination or self.store_root / ".mlflow" / "artifacts"

    @property
    def store_root(self) -> Path:
        """The folder whose ``.mlflow/`` holds the default store: the project's, from any DVC working copy.

        DVC runs an experiment (`dvc exp run --temp`, queued runs) in a copy of the repository under
        ``.dvc/tmp/exps/`` and deletes it afterwards: a build registered into the copy's own store would
        vanish with it, so the store is the same folder of the repository the copy came from. The
        params still come from ``project_dir``, the copy's (with ``-S`` applied).
        """
        if self.store_dir is not None:
            return self.store_dir
        if self.dvc_root is not None and (copy := _experiment_copy(self.project_dir, self.dvc_root)) is not None:
            return self.dvc_root / self.project_dir.resolve().relative_to(copy)
        return self.project_dir

    @property
    def effective_tracking_uri(self) -> str:
        return self.tracking_uri or self.store_uri

    @property
    def display_uri(self) -> str:
        """The tracking URI for messages: without credentials, should someone put them in it."""
        parsed = urlparse(self.effective_tracking_uri)
        if parsed.username or parsed.password:
            return parsed._replace(netloc=parsed.netloc.rpartition("@")[2]).geturl()
        return self.effective_tracking_uri

    @property
    def is_remote(self) -> bool:
        """True when a tracking server answers (artifacts then go through it)."""
        return self.effective_tracking_uri.startswith(("http://", "https://"))

    @property
    def server_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def lock_model_name(self) -> str:
        return f"{self.model_name}.rollout-lock"

    @property
    def events_experiment(self) -> str:
        return f"{self.model_name}-rollout"

    @property
    def params_file(self) -> Path:
        return self.project_dir / PARAMS_FILE
