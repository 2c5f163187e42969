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


def test_a_dvc_experiment_copy_registers_into_the_projects_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dvc exp run --temp` runs the code in a copy it deletes; DVC_ROOT names the repository it came from."""
    repo = tmp_path / "repo"
    project = repo / "models" / "qwen"  # the project may sit in a folder of a larger repository
    copy = repo / ".dvc" / "tmp" / "exps" / "standalone" / "tmp1a2b"
    (copy / ".dvc").mkdir(parents=True)
    (copy / "models" / "qwen").mkdir(parents=True)
    (copy / "models" / "qwen" / "params.yaml").write_text("registry:\n  model_name: from-the-copy\n  experiment: e\n")
    for name in ("MLFLOW_TRACKING_URI", "REGISTRY_TRACKING_URI", "REGISTRY_STORE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DVC_ROOT", str(repo))

    settings = RegistrySettings(project_dir=copy / "models" / "qwen")

    assert settings.store_uri == f"sqlite:///{project / '.mlflow' / 'mlflow.db'}"
    assert settings.artifacts_dir == project / ".mlflow" / "artifacts"
    # The names are the experiment's own (its params, `-S` applied), not the repository's.
    assert (settings.model_name, settings.params_file) == ("from-the-copy", copy / "models" / "qwen" / "params.yaml")


def test_outside_an_experiment_copy_the_store_is_the_projects_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    project = repo / "models" / "qwen"
    project.mkdir(parents=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    own = f"sqlite:///{project / '.mlflow' / 'mlflow.db'}"
    for dvc_root in (str(repo), str(project)):  # `dvc repro` in the repository: DVC_ROOT is its root
        monkeypatch.setenv("DVC_ROOT", dvc_root)
        assert RegistrySettings(project_dir=project, model_name="m", experiment="e").store_uri == own
    monkeypatch.delenv("DVC_ROOT")
    assert RegistrySettings(project_dir=project, model_name="m", experiment="e").store_uri == own
    monkeypatch.setenv("REGISTRY_STORE_DIR", str(tmp_path / "elsewhere"))
    elsewhere = RegistrySettings(project_dir=project, model_name="m", experiment="e")
    assert elsewhere.store_uri == f"sqlite:///{tmp_path / 'elsewhere' / '.mlflow' / 'mlflow.db'}"
