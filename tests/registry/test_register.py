"""The register stage against a real MLflow server: what it records, and what it refuses."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pipelines import register as stage
from pipelines.register import RegisterInputs
from registry import events, materialize, rollout
from registry.errors import NotValidatedError
from registry.events import Actor
from registry.settings import RegistrySettings
from registry.state import read_state, resolve
from registry.store import Store

pytestmark = pytest.mark.mlflow


def _argv(inputs: RegisterInputs, out: Path) -> list[str]:
    return [
        "--params", str(inputs.params), "--lock", str(inputs.lock),
        "--validate", str(inputs.validate_metrics), "--package", str(inputs.package_metrics),
        "--quantize", str(inputs.quantize_metrics), "--metrics", *map(str, inputs.other_metrics),
        "--triton-repo", str(inputs.triton_repo), "--out", str(out),
    ]  # fmt: skip


def _use(settings: RegistrySettings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(settings.tracking_uri))
    monkeypatch.setenv("REGISTRY_MODEL_NAME", settings.model_name)
    monkeypatch.setenv("REGISTRY_EXPERIMENT", settings.experiment)
    monkeypatch.setenv("USER", "stage-tester")
    for name in ("GITHUB_ACTOR", "GITHUB_RUN_ID"):
        monkeypatch.delenv(name, raising=False)


def test_register_records_run_version_tags_and_candidate_alias(
    settings: RegistrySettings,
    store: Store,
    make_project: Callable[..., RegisterInputs],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inputs = make_project(git=True)
    out = inputs.params.parent / "metrics" / "register.json"
    _use(settings, monkeypatch)

    assert stage.main(_argv(inputs, out)) == 0

    written = json.loads(out.read_text())
    assert written == {
        "registered_model": settings.model_name,
        "version": 1,
        "run_id": written["run_id"],
        "alias": "candidate",
    }
    run = store.client.get_run(written["run_id"])
    assert run.data.params["quantize.method"] == "bnb-nf4"
    assert run.data.params["package.model_name"] == "qwen3-vl"
    assert run.data.params["metrics.quantize.method"] == "bnb-nf4"
    assert run.data.metrics["validate.accuracy"] == pytest.approx(0.9)
    assert run.data.metrics["validate.per_category.color"] == pytest.approx(0.9)
    assert run.data.metrics["validate.passed"] == 1.0
    assert run.data.metrics["base_model.accuracy"] == pytest.approx(0.92)
    lock_digest = hashlib.sha256(inputs.lock.read_bytes()).hexdigest()
    assert run.data.tags["dvc.lock.sha256"] == lock_digest
    assert run.data.tags["params.sha256"] == hashlib.sha256(inputs.params.read_bytes()).hexdigest()
    assert len(run.data.tags["git.commit"]) == 40
    assert run.data.tags["git.dirty"] == "false"
    listed = {f.path for f in store.client.list_artifacts(written["run_id"], "model")}
    assert listed == {"model/config.pbtxt", "model/version", "model/warmup"}

    candidate = resolve(store, "candidate")
    assert candidate is not None and candidate.version == 1
    assert candidate.run_id == written["run_id"]
    assert candidate.source.endswith("/model")
    assert candidate.validation_passed and candidate.accuracy == pytest.approx(0.9)
    assert candidate.dvc_lock_sha256 == lock_digest
    assert candidate.quantization == "bnb-nf4"
    weights = inputs.triton_repo / "qwen3-vl" / "1" / "model.safetensors"
    assert candidate.tags["sha256:version/model.safetensors"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert "sha256:config.pbtxt" in candidate.tags and "sha256:warmup/messages.bin" in candidate.tags
    assert len(candidate.tags["manifest.sha256"]) == 64

    recorded = events.history(store)
    assert [(e.action, e.version, e.actor) for e in recorded] == [("register", 1, "stage-tester")]


def test_a_version_that_failed_validation_is_refused_and_nothing_is_registered(
    settings: RegistrySettings,
    store: Store,
    make_project: Callable[..., RegisterInputs],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    inputs = make_project(passed=False, accuracy=0.5)
    out = inputs.params.parent / "metrics" / "register.json"
    _use(settings, monkeypatch)

    assert stage.main(_argv(inputs, out)) == 1

    err = capsys.readouterr().err
    assert "validation did not pass" in err
    assert "accuracy 0.5000 vs reference 0.9200" in err and "config errors: 2" in err
    assert not out.exists()
    assert store.client.search_registered_models(f"name = '{settings.model_name}'") == []
    assert store.client.get_experiment_by_name(settings.experiment) is None
    with pytest.raises(NotValidatedError):
        stage.register(inputs, settings, Actor(name="t"))


def test_embedded_store_is_the_store_make_mlflow_serves(
    mlflow_server: RegistrySettings, make_project: Callable[..., RegisterInputs], tmp_path: Path
) -> None:
    """Registered with no server (sqlite + artifacts folder), then read and served through the server."""
    embedded = mlflow_server.model_copy(
        update={"tracking_uri": None, "model_name": "embedded-model", "experiment": "embedded-pipeline"}
    )
    assert embedded.effective_tracking_uri.startswith("sqlite:///")
    registration = stage.register(make_project(), embedded, Actor(name="offline"))
    assert registration.source.startswith("mlflow-artifacts:/embedded-pipeline/")
    on_disk = mlflow_server.artifacts_dir / "embedded-pipeline" / registration.run_id / "artifacts" / "model"
    assert (on_disk / "version" / "model.py").is_file()

    served = Store(mlflow_server.model_copy(update={"model_name": "embedded-model"}))
    assert read_state(served).aliases == {"candidate": 1}
    rollout.promote_to_canary(served, Actor(name="online"))
    result = materialize.materialize(served, tmp_path / "repo")
    assert (tmp_path / "repo" / "qwen3-vl" / "1" / "model.py").is_file()
    assert result.versions == [1]


def test_a_verdict_about_another_version_is_refused(make_project: Callable[..., RegisterInputs]) -> None:
    inputs = make_project()
    verdict = json.loads(inputs.validate_metrics.read_text()) | {"model": "qwen3-vl", "version": 7}
    inputs.validate_metrics.write_text(json.dumps(verdict))
    with pytest.raises(NotValidatedError, match=r"judges qwen3-vl v7, but .* packaged qwen3-vl v1"):
        stage.build_candidate(inputs)


def test_bad_registry_settings_are_a_message_not_a_traceback(
    make_project: Callable[..., RegisterInputs], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = make_project()
    monkeypatch.setenv("REGISTRY_PORT", "not-a-port")
    assert stage.main(_argv(inputs, inputs.params.parent / "metrics" / "register.json")) == 1
    assert "register: error: registry settings" in capsys.readouterr().err
