"""The register stage against a real MLflow server: what it records, and what it refuses."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from core.manifest import manifest_digest, model_digests
from pipelines import register as stage
from pipelines.register import RegisterInputs
from registry import events, materialize, rollout
from registry.errors import NotValidatedError, UpstreamError
from registry.events import Actor
from registry.settings import RegistrySettings
from registry.state import VERSION_TAGS, read_state, resolve
from registry.store import Store

pytestmark = pytest.mark.mlflow


def _argv(inputs: RegisterInputs, out: Path) -> list[str]:
    return [
        "--params", str(inputs.params), "--lock", str(inputs.lock),
        "--validate", str(inputs.validate_metrics), "--package", str(inputs.package_metrics),
        "--quantize", str(inputs.quantize_metrics), "--metrics", *map(str, inputs.other_metrics),
        "--triton-repo", str(inputs.triton_repo), "--golden", str(inputs.golden), "--out", str(out),
    ]  # fmt: skip


def _use(settings: RegistrySettings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(settings.tracking_uri))
    monkeypatch.setenv("REGISTRY_MODEL_NAME", settings.model_name)
    monkeypatch.setenv("REGISTRY_EXPERIMENT", settings.experiment)
    monkeypatch.setenv("USER", "stage-tester")
    for name in ("GITHUB_ACTOR", "GITHUB_RUN_ID"):
        monkeypatch.delenv(name, raising=False)


def _model_dir(inputs: RegisterInputs) -> Path:
    return inputs.triton_repo / "qwen3-vl-v1"


def test_register_records_run_version_tags_manifest_and_candidate_alias(
    settings: RegistrySettings,
    store: Store,
    make_project: Callable[..., RegisterInputs],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inputs = make_project(git=True)
    out = inputs.params.parent / "artifacts" / "register.json"
    _use(settings, monkeypatch)

    assert stage.main(_argv(inputs, out)) == 0

    served = json.loads(inputs.validate_metrics.read_text())["served_digest"]
    written = json.loads(out.read_text())
    # No run id and no timestamps: the same bytes on every machine for the same store state.
    assert written == {
        "registered_model": settings.model_name,
        "version": 1,
        "alias": "candidate",
        "served_digest": served,
    }
    candidate = resolve(store, "candidate")
    assert candidate is not None and candidate.version == 1 and candidate.run_id
    run = store.client.get_run(candidate.run_id)
    assert run.data.params["quantize.method"] == "bnb-nf4"
    assert run.data.params["package.model_name"] == "qwen3-vl"
    assert run.data.params["metrics.quantize.method"] == "bnb-nf4"
    assert run.data.metrics["validate.accuracy"] == pytest.approx(0.9)
    assert run.data.metrics["validate.per_category.color"] == pytest.approx(0.9)
    assert run.data.metrics["validate.passed"] == 1.0
    assert run.data.metrics["base_model.accuracy"] == pytest.approx(0.92)
    lock_digest = hashlib.sha256(inputs.lock.read_bytes()).hexdigest()
    assert run.data.tags["dvc.lock.sha256"] == lock_digest
    assert run.data.tags["params.sha256"] == stage.params_digest(inputs.params)
    assert len(run.data.tags["git.commit"]) == 40
    assert run.data.tags["git.dirty"] == "false"
    assert run.data.tags["package.model"] == "qwen3-vl-v1"
    root = {f.path for f in store.client.list_artifacts(candidate.run_id)}
    # The golden set validate judged on, for the rollout controller's probes, beside the model.
    assert root == {"manifest.json", "model", "golden"}
    assert {f.path for f in store.client.list_artifacts(candidate.run_id, "golden")} >= {"golden/golden.jsonl"}
    listed = {f.path for f in store.client.list_artifacts(candidate.run_id, "model")}
    assert listed == {"model/config.pbtxt", "model/version", "model/warmup", "model/MLmodel"}

    assert candidate.source.endswith("/model")
    assert candidate.accuracy == pytest.approx(0.9) and candidate.drop == pytest.approx(0.02)
    assert candidate.dvc_lock_sha256 == lock_digest
    assert candidate.quantization == "bnb-nf4"
    # The Triton model that serves it, as the controller names it: not the bare model name.
    assert candidate.triton_model == f"{settings.model_name}-v1"
    assert candidate.served_digest == served
    # The version page shows every tag: the dozen lineage tags, no per-file checksums.
    assert set(candidate.tags) == set(VERSION_TAGS) and len(candidate.tags) <= 12
    manifest_json = Path(store.client.download_artifacts(candidate.run_id, "manifest.json", str(out.parent)))
    assert hashlib.sha256(manifest_json.read_bytes()).hexdigest() == candidate.manifest_sha256
    files = json.loads(manifest_json.read_text())["files"]
    assert files == model_digests(_model_dir(inputs), "1")
    weights = _model_dir(inputs) / "1" / "model.safetensors"
    assert files["version/model.safetensors"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert {"config.pbtxt", "warmup/messages.bin"} <= set(files)

    recorded = events.history(store)
    assert [(e.action, e.version, e.actor) for e in recorded] == [("register", 1, "stage-tester")]


def test_python_bytecode_is_never_uploaded(
    settings: RegistrySettings, store: Store, make_project: Callable[..., RegisterInputs], tmp_path: Path
) -> None:
    inputs = make_project()
    # The Python backend's interpreter writes bytecode next to model.py when it serves the folder.
    cache = _model_dir(inputs) / "1" / "__pycache__"
    cache.mkdir()
    (cache / "model.cpython-311.pyc").write_bytes(b"\x00bytecode")
    (_model_dir(inputs) / "warmup" / "stray.pyc").write_bytes(b"\x00")

    registration = stage.register(inputs, settings, Actor(name="t"))

    on_disk = settings.artifacts_dir / registration.source.removeprefix("mlflow-artifacts:/")
    uploaded = sorted(p.relative_to(on_disk).as_posix() for p in on_disk.rglob("*") if p.is_file())
    assert uploaded == [
        "MLmodel",
        "config.pbtxt",
        "version/model.py",
        "version/model.safetensors",
        "version/tokenizer/tokenizer.json",
        "warmup/messages.bin",
    ]
    folder = materialize.materialize_version(store, registration.version, tmp_path / "v1")
    assert not list(folder.rglob("*.pyc"))
    # The signature is for MLflow's UI: Triton gets exactly the manifest's files.
    assert not (folder / "MLmodel").exists()


def test_the_version_shows_its_accuracy_signature_and_evaluation_set_where_mlflow_shows_them(
    settings: RegistrySettings, store: Store, make_project: Callable[..., RegisterInputs], tmp_path: Path
) -> None:
    """What the MLflow UI reads: descriptions in words, the schema from MLmodel, the run's dataset input."""
    import yaml
    from mlflow.models.signature import ModelSignature

    inputs = make_project(accuracy=0.8967)
    registration = stage.register(inputs, settings, Actor(name="t"))
    version = store.client.get_model_version(settings.model_name, str(registration.version))

    assert "accuracy 89.7% (2.3 points lower than the base model) on the golden set (1 question)" in (
        version.description
    )
    assert "drop" not in version.description and "+0." not in version.description
    model = store.client.get_registered_model(settings.model_name)
    assert "<" not in model.description and f"`{settings.model_name}-v3`" in model.description
    assert version.tags["triton.model"] == f"{settings.model_name}-v1"

    # The version page's schema: MLmodel next to the version's files, from the packaged config.pbtxt.
    mlmodel = Path(store.download_file(version.source, "MLmodel", tmp_path))
    signature = ModelSignature.from_dict(yaml.safe_load(mlmodel.read_text())["signature"])
    assert [(t.name, t.type.name, t.shape) for t in signature.inputs.inputs] == [("messages", "object", (-1, 1))]
    assert [(t.name, t.type.name, t.shape) for t in signature.outputs.inputs] == [("answer", "object", (-1, 1))]

    run = store.client.get_run(str(registration.run_id))
    (dataset,) = run.inputs.dataset_inputs
    assert (dataset.dataset.name, json.loads(dataset.dataset.source)) == ("golden", {"uri": str(inputs.golden)})
    assert {t.key: t.value for t in dataset.tags} == {"mlflow.data.context": "evaluation"}
    assert json.loads(str(dataset.dataset.profile)) == {"files": 2, "questions": 1}
    digest = manifest_digest({p.relative_to(inputs.golden).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                              for p in sorted(inputs.golden.rglob("*")) if p.is_file()})  # fmt: skip
    assert dataset.dataset.digest == digest[:16]
    assert run.data.metrics["validate.accuracy"] == pytest.approx(0.8967)
    assert run.data.tags["mlflow.note.content"] == version.description


def test_files_that_differ_from_what_validate_served_are_refused(
    settings: RegistrySettings,
    store: Store,
    make_project: Callable[..., RegisterInputs],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    inputs = make_project()
    served = json.loads(inputs.validate_metrics.read_text())["served_digest"]
    (_model_dir(inputs) / "1" / "model.safetensors").write_bytes(b"swapped after validation")
    actual = manifest_digest(model_digests(_model_dir(inputs), "1"))
    out = inputs.params.parent / "artifacts" / "register.json"
    _use(settings, monkeypatch)

    assert stage.main(_argv(inputs, out)) == 1

    err = capsys.readouterr().err
    assert served in err and actual in err and "rerun `dvc repro`" in err
    assert not out.exists()
    assert store.client.search_registered_models(f"name = '{settings.model_name}'") == []


def test_a_rerun_finds_the_version_instead_of_registering_a_duplicate(
    settings: RegistrySettings,
    store: Store,
    actor: Actor,
    make_project: Callable[..., RegisterInputs],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inputs = make_project()
    out = inputs.params.parent / "artifacts" / "register.json"
    _use(settings, monkeypatch)
    real_mark = rollout.mark_candidate

    def dies_after_the_version_exists(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed between create_model_version and the alias")

    monkeypatch.setattr(rollout, "mark_candidate", dies_after_the_version_exists)
    with pytest.raises(RuntimeError, match="killed"):
        stage.main(_argv(inputs, out))
    assert read_state(store).aliases == {}
    monkeypatch.setattr(rollout, "mark_candidate", real_mark)

    assert stage.main(_argv(inputs, out)) == 0  # the retry finishes the job
    first = out.read_bytes()
    assert stage.main(_argv(inputs, out)) == 0  # an identical rerun changes nothing
    assert out.read_bytes() == first and json.loads(first)["version"] == 1
    assert [mv.version for mv in store.client.search_model_versions(f"name = '{settings.model_name}'")] == ["1"]
    assert read_state(store).aliases == {"candidate": 1}
    assert [(e.action, e.version) for e in events.history(store)] == [("register", 1)]
    assert "registered earlier from the same files and params" in events.history(store)[0].summary

    # Already serving: a rerun leaves it champion and says so.
    rollout.promote_to_champion(store, actor)
    assert stage.main(_argv(inputs, out)) == 0
    assert json.loads(out.read_text())["alias"] == "champion"
    assert read_state(store).aliases == {"champion": 1}

    # Different files are a new version.
    other = make_project(weights=b"other")
    assert stage.register(other, settings, actor).version == 2


def test_a_version_that_failed_validation_is_refused_and_nothing_is_registered(
    settings: RegistrySettings,
    store: Store,
    make_project: Callable[..., RegisterInputs],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    inputs = make_project(passed=False, accuracy=0.5)
    out = inputs.params.parent / "artifacts" / "register.json"
    _use(settings, monkeypatch)

    assert stage.main(_argv(inputs, out)) == 1

    err = capsys.readouterr().err
    assert "validation did not pass" in err
    assert "accuracy 50.0% (42.0 points lower than the base model), base 92.0%" in err and "config errors: 2" in err
    assert "failures: ['accuracy below the gate']" in err
    assert not out.exists()
    assert store.client.search_registered_models(f"name = '{settings.model_name}'") == []
    assert store.client.get_experiment_by_name(settings.experiment) is None
    with pytest.raises(NotValidatedError):
        stage.register(inputs, settings, Actor(name="t"))


def test_embedded_store_is_the_store_make_mlflow_serves(
    mlflow_server: RegistrySettings, make_project: Callable[..., RegisterInputs], tmp_path: Path
) -> None:
    """Registered with no server (the store itself + the artifacts folder), then read through the server."""
    embedded = mlflow_server.model_copy(
        update={"tracking_uri": None, "model_name": "embedded-model", "experiment": "embedded-pipeline"}
    )
    assert embedded.effective_tracking_uri == mlflow_server.store_uri  # the store the server serves
    if mlflow_server.backend_store_uri is not None:  # PostgreSQL: the URI names the driver the image installs
        assert embedded.effective_tracking_uri.startswith("postgresql+psycopg2://")
    registration = stage.register(make_project(), embedded, Actor(name="offline"))
    assert registration.source.startswith("mlflow-artifacts:/embedded-pipeline/")
    on_disk = mlflow_server.artifacts_dir / "embedded-pipeline" / str(registration.run_id) / "artifacts"
    assert (on_disk / "model" / "version" / "model.py").is_file() and (on_disk / "manifest.json").is_file()

    served = Store(mlflow_server.model_copy(update={"model_name": "embedded-model"}))
    assert read_state(served).aliases == {"candidate": 1}
    rollout.promote_to_champion(served, Actor(name="online"))
    result = materialize.materialize_serving(served, tmp_path / "repo")
    # Served under the registered model's name, as the controller loads it (not the params' model name).
    assert result.champion is not None and result.champion.served_model == "embedded-model-v1"
    assert (tmp_path / "repo" / "1" / "version" / "model.py").is_file()


def test_a_verdict_about_another_version_is_refused(make_project: Callable[..., RegisterInputs]) -> None:
    inputs = make_project()
    verdict = json.loads(inputs.validate_metrics.read_text()) | {"model": "qwen3-vl", "version": 7}
    inputs.validate_metrics.write_text(json.dumps(verdict))
    with pytest.raises(NotValidatedError, match=r"judges qwen3-vl v7, but .* packaged qwen3-vl-v1 v1"):
        stage.build_candidate(inputs)


def test_a_reserved_model_level_name_is_refused(
    settings: RegistrySettings, store: Store, make_project: Callable[..., RegisterInputs]
) -> None:
    inputs = make_project()
    (_model_dir(inputs) / "version").mkdir()
    with pytest.raises(UpstreamError, match="reserved for the version folder"):
        stage.register(inputs, settings, Actor(name="t"))
    assert store.client.search_registered_models(f"name = '{settings.model_name}'") == []


def test_bad_registry_settings_are_a_message_not_a_traceback(
    make_project: Callable[..., RegisterInputs], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = make_project()
    monkeypatch.setenv("REGISTRY_PORT", "not-a-port")
    assert stage.main(_argv(inputs, inputs.params.parent / "metrics" / "register.json")) == 1
    assert "register: error: registry settings" in capsys.readouterr().err
