"""What only the PostgreSQL backend needs: its URI names the installed driver, and a missing server says what
to install. (The register stage writing straight into PostgreSQL, with no server, what the server then
serves is ``test_register.py::test_embedded_store_is_the_store_make_mlflow_serves[postgresql]``.)"""

from __future__ import annotations

import shutil

import pytest
from pydantic import ValidationError

from registry.settings import RegistrySettings
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
