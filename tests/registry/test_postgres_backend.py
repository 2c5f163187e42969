"""What only the PostgreSQL backend needs: its URI names the installed driver, a missing server says what to
install, and the register stage writes straight into PostgreSQL (no server) what the server then serves."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from pipelines import register as stage
from pipelines.register import RegisterInputs
from registry import materialize, rollout
from registry.events import Actor
from registry.settings import RegistrySettings
from registry.state import read_state
from registry.store import Store
from tests.registry import postgres


def test_a_bare_postgresql_uri_is_refused_with_the_driver_to_name_and_no_password() -> None:
    with pytest.raises(ValidationError) as refused:
        RegistrySettings(backend_store_uri="postgresql://mlflow:s3cret@db:5432/mlflow")
    message = str(refused.value)
    assert "postgresql+psycopg2://USER:PASSWORD@HOST:5432/DATABASE" in message
    assert "s3cret" not in message
    uri = "postgresql+psycopg2://mlflow:s3cret@db:5432/mlflow"
    settings = RegistrySettings(backend_store_uri=uri)
    assert settings.store_uri == uri and "s3cret" not in settings.display_uri


def test_without_postgresql_installed_the_fixture_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(postgres, "DEBIAN_BIN_GLOB", "/nonexistent/postgresql/*/bin")
    with pytest.raises(postgres.PostgresError, match=r"make install.*apt-get install postgresql"):
        postgres.bin_dir()


@pytest.mark.mlflow
@pytest.mark.slow
@pytest.mark.parametrize("mlflow_server", ["postgresql"], indirect=True)
def test_registered_without_a_server_into_postgresql_then_served_through_it(
    mlflow_server: RegistrySettings, make_project: Callable[..., RegisterInputs], tmp_path: Path
) -> None:
    """The register stage with only REGISTRY_BACKEND_STORE_URI set (no tracking server), as on a build machine
    that reaches the database; the server on the same database then serves that version."""
    embedded = mlflow_server.model_copy(
        update={"tracking_uri": None, "model_name": "embedded-model", "experiment": "embedded-pipeline"}
    )
    assert embedded.effective_tracking_uri == mlflow_server.store_uri
    assert embedded.effective_tracking_uri.startswith("postgresql+psycopg2://")
    registration = stage.register(make_project(), embedded, Actor(name="offline"))
    assert registration.source.startswith("mlflow-artifacts:/embedded-pipeline/")

    served = Store(mlflow_server.model_copy(update={"model_name": "embedded-model"}))
    assert read_state(served).aliases == {"candidate": 1}
    rollout.promote_to_champion(served, Actor(name="online"))
    result = materialize.materialize_serving(served, tmp_path / "repo")
    assert result.champion is not None and result.champion.served_model == "qwen3-vl-v1"
    assert (tmp_path / "repo" / "1" / "version" / "model.py").is_file()
