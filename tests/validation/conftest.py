"""Fixtures for the config checker tests: tiny Python-backend model folders written on demand."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.validation.cases import Case, MakeModel, model


@pytest.fixture()
def make_model(tmp_path: Path) -> MakeModel:
    """``make_model(name, body, **kw)`` writes one model (config, version folders, model.py) into a repository."""
    repository = tmp_path / "repo"

    def write(name: str, body: str = "", **kwargs: object) -> Path:
        case: Case = model(name, body, **kwargs)  # type: ignore[arg-type]
        return case.write(repository)

    return write
