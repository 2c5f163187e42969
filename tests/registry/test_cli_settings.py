"""Bad registry settings are refused with the setting's name, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.__main__ import main
from registry.settings import RegistrySettings


def test_bad_model_name_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", "a/b", "status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("registry: error: bad settings") and "model_name" in err and "Traceback" not in err


def test_bad_port_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("REGISTRY_PORT", "x")
    assert main(["status"]) == 1
    assert "port: Input should be a valid integer" in capsys.readouterr().err


def test_a_dvc_working_copy_registers_into_the_projects_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`dvc exp run --temp` runs the code in a copy it deletes; DVC_ROOT names the project the store lives in."""
    project, copy = tmp_path / "project", tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmp1"
    copy.mkdir(parents=True)
    (copy / "params.yaml").write_text("registry:\n  model_name: from-the-copy\n  experiment: exp-copy\n")
    for name in ("MLFLOW_TRACKING_URI", "REGISTRY_TRACKING_URI", "REGISTRY_STORE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DVC_ROOT", str(project))

    settings = RegistrySettings(project_dir=copy)

    assert settings.store_uri == f"sqlite:///{project / '.mlflow' / 'mlflow.db'}"
    assert settings.artifacts_dir == project / ".mlflow" / "artifacts"
    # The names are the experiment's own (its params, `-S` applied), not the project's.
    assert (settings.model_name, settings.params_file) == ("from-the-copy", copy / "params.yaml")

    monkeypatch.delenv("DVC_ROOT")
    assert RegistrySettings(project_dir=copy).store_uri == f"sqlite:///{copy / '.mlflow' / 'mlflow.db'}"
