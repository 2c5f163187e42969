"""The one place that talks to MLflow: client, experiments and artifact storage.

Runs keep artifacts under ``mlflow-artifacts:/...`` URIs whether they were logged through
``make mlflow`` or straight into the embedded sqlite store. The server resolves those URIs under
its ``--artifacts-destination``; without a server this module resolves them under the same folder,
so one store reads the same either way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlparse

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repo import ArtifactRepository
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

from registry.errors import NotFoundError, RegistryError
from registry.settings import RegistrySettings

log = logging.getLogger(__name__)

ALREADY_EXISTS = "RESOURCE_ALREADY_EXISTS"
DOES_NOT_EXIST = "RESOURCE_DOES_NOT_EXIST"


def error_code(exc: MlflowException) -> str:
    return str(exc.error_code)


class Store:
    """An MLflow client bound to one registered model, plus artifact upload and download."""

    def __init__(self, settings: RegistrySettings) -> None:
        self.settings = settings
        self.model = settings.model_name
        uri = settings.effective_tracking_uri
        if uri.startswith("sqlite:///"):
            # sqlite creates the file, not its folder.
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    @property
    def where(self) -> str:
        """The store, for messages."""
        return self.settings.display_uri

    def experiment_id(self, name: str) -> str:
        """Get or create an experiment; a concurrent creator is not an error."""
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        # Through a server, the server picks the proxied location; embedded, use the same scheme.
        location = None if self.settings.is_remote else f"mlflow-artifacts:/{name}"
        try:
            return str(self.client.create_experiment(name, artifact_location=location))
        except MlflowException as exc:
            if error_code(exc) != ALREADY_EXISTS:
                raise
        again = self.client.get_experiment_by_name(name)
        if again is None:
            raise RegistryError(f"experiment {name!r} exists but cannot be read from {self.where}")
        return str(again.experiment_id)

    def artifact_repo(self, uri: str) -> ArtifactRepository:
        if uri.startswith("mlflow-artifacts:") and not self.settings.is_remote:
            relative = urlparse(uri).path.lstrip("/")
            return LocalArtifactRepository((self.settings.artifacts_dir / relative).as_uri())
        return get_artifact_repository(uri, tracking_uri=self.settings.effective_tracking_uri)

    def upload_file(self, artifact_uri: str, local_file: Path, artifact_path: str | None) -> None:
        """Upload one file into ``artifact_path`` (a folder under ``artifact_uri``; None for its root)."""
        self.artifact_repo(artifact_uri).log_artifact(str(local_file), artifact_path)

    def upload_dir(self, artifact_uri: str, local_dir: Path, artifact_path: str) -> None:
        """Upload every file under ``local_dir`` into ``artifact_path`` (a folder under ``artifact_uri``)."""
        self.artifact_repo(artifact_uri).log_artifacts(str(local_dir), artifact_path)

    def download(self, source: str, dst: Path) -> Path:
        """Copy everything under ``source`` into ``dst`` (created) and return ``dst``."""
        dst.mkdir(parents=True, exist_ok=True)
        try:
            self.artifact_repo(source).download_artifacts("", str(dst))
        except (MlflowException, OSError) as exc:
            raise NotFoundError(f"cannot download {source} from {self.where}: {exc}") from exc
        return dst

    def download_file(self, artifact_uri: str, path: str, dst: Path) -> Path:
        """Copy the one file ``path`` under ``artifact_uri`` into the folder ``dst``; return the copy."""
        try:
            return Path(self.artifact_repo(artifact_uri).download_artifacts(path, str(dst)))
        except (MlflowException, OSError) as exc:
            raise NotFoundError(f"cannot download {artifact_uri}/{path} from {self.where}: {exc}") from exc

    def missing_model(self) -> NotFoundError:
        """The error for a registered model that does not exist yet, with the next step."""
        return NotFoundError(
            f"registered model {self.model!r} does not exist in {self.where}. Register one with `dvc repro`: "
            "its `register` stage records the validated build and makes it the candidate "
            "(check the name: --model, REGISTRY_MODEL_NAME or params.yaml's registry.model_name)"
        )
