"""Materialize: the serving Triton repository from the registry, checksums verified."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from pipelines import register as stage
from pipelines.register import RegisterInputs
from registry import materialize, rollout
from registry.errors import NotFoundError, TamperedArtifactError
from registry.events import Actor
from registry.manifest import tree_digests
from registry.settings import RegistrySettings
from registry.state import resolve
from registry.store import Store

pytestmark = pytest.mark.mlflow


def _champion_and_canary(
    settings: RegistrySettings, store: Store, actor: Actor, make_project: Callable[..., RegisterInputs]
) -> tuple[RegisterInputs, RegisterInputs]:
    first, second = make_project(weights=b"champion"), make_project(weights=b"canary")
    stage.register(first, settings, actor)
    rollout.promote_to_canary(store, actor)
    rollout.promote_to_champion(store, actor)
    stage.register(second, settings, actor)
    rollout.promote_to_canary(store, actor, weight=10)
    return first, second


def _artifact_on_disk(settings: RegistrySettings, store: Store, alias: str) -> Path:
    """Where the server keeps a version's artifact (mlflow-artifacts:/<path> under its destination)."""
    info = resolve(store, alias)  # type: ignore[arg-type]
    assert info is not None
    return settings.artifacts_dir / info.source.removeprefix("mlflow-artifacts:/")


def test_materialize_serves_champion_and_canary_numbered_by_mlflow_version(
    settings: RegistrySettings,
    store: Store,
    actor: Actor,
    make_project: Callable[..., RegisterInputs],
    tmp_path: Path,
) -> None:
    first, second = _champion_and_canary(settings, store, actor, make_project)
    out = tmp_path / "serving-repo"
    (out / "stale").mkdir(parents=True)  # an earlier materialization is replaced whole

    result = materialize.materialize(store, out)

    assert (result.champion, result.canary, result.versions) == (1, 2, [1, 2])
    model = out / "qwen3-vl"
    assert sorted(p.name for p in out.iterdir()) == ["qwen3-vl"]
    assert sorted(p.name for p in model.iterdir()) == ["1", "2", "config.pbtxt", "warmup"]
    assert tree_digests(model / "1") == tree_digests(first.triton_repo / "qwen3-vl" / "1")
    assert tree_digests(model / "2") == tree_digests(second.triton_repo / "qwen3-vl" / "1")
    assert (model / "warmup" / "messages.bin").read_bytes() == b"\x02\x00\x00\x00hi"
    config = text_format.Parse((model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == "qwen3-vl"
    assert config.version_policy.WhichOneof("policy_choice") == "specific"
    assert list(config.version_policy.specific.versions) == [1, 2]
    assert config.max_batch_size == 8 and config.model_warmup[0].name == "w"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp folders left behind"


def test_tampered_artifact_is_refused_with_its_path(
    settings: RegistrySettings,
    store: Store,
    actor: Actor,
    make_project: Callable[..., RegisterInputs],
    tmp_path: Path,
) -> None:
    _champion_and_canary(settings, store, actor, make_project)
    weights = _artifact_on_disk(settings, store, "canary") / "version" / "model.safetensors"
    weights.write_bytes(weights.read_bytes() + b"evil")
    out = tmp_path / "serving-repo"
    (out / "qwen3-vl").mkdir(parents=True)
    (out / "qwen3-vl" / "keep-me").write_text("the repository Triton serves now")

    with pytest.raises(TamperedArtifactError, match=r"/model/version/model\.safetensors: modified") as caught:
        materialize.materialize(store, out)

    assert resolve(store, "canary").source in str(caught.value)  # type: ignore[union-attr]
    assert (out / "qwen3-vl" / "keep-me").read_text() == "the repository Triton serves now"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp folders left behind"


def test_injected_file_is_refused(
    settings: RegistrySettings,
    store: Store,
    actor: Actor,
    make_project: Callable[..., RegisterInputs],
    tmp_path: Path,
) -> None:
    _champion_and_canary(settings, store, actor, make_project)
    (_artifact_on_disk(settings, store, "champion") / "version" / "sitecustomize.py").write_text("import os\n")
    with pytest.raises(TamperedArtifactError, match=r"version/sitecustomize\.py: unexpected file"):
        materialize.materialize(store, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_edited_checksum_tag_is_refused(
    settings: RegistrySettings,
    store: Store,
    actor: Actor,
    make_project: Callable[..., RegisterInputs],
    tmp_path: Path,
) -> None:
    _champion_and_canary(settings, store, actor, make_project)
    store.client.set_model_version_tag(settings.model_name, "2", "sha256:version/model.py", "0" * 64)
    with pytest.raises(TamperedArtifactError, match=r"do not match manifest\.sha256"):
        materialize.materialize(store, tmp_path / "repo")


def test_nothing_to_serve(
    settings: RegistrySettings, store: Store, actor: Actor, make_project: Callable[..., RegisterInputs], tmp_path: Path
) -> None:
    stage.register(make_project(), settings, actor)  # a candidate only
    with pytest.raises(NotFoundError, match="no champion or canary"):
        materialize.materialize(store, tmp_path / "repo")


def test_a_path_like_triton_model_tag_is_refused(
    settings: RegistrySettings,
    store: Store,
    actor: Actor,
    make_project: Callable[..., RegisterInputs],
    tmp_path: Path,
) -> None:
    from registry.errors import RegistryError
    from registry.state import TAG_TRITON_MODEL

    _champion_and_canary(settings, store, actor, make_project)
    for alias in ("champion", "canary"):
        info = resolve(store, alias)  # type: ignore[arg-type]
        assert info is not None
        store.client.set_model_version_tag(settings.model_name, str(info.version), TAG_TRITON_MODEL, "../escape")
    with pytest.raises(RegistryError, match="not a plain folder name"):
        materialize.materialize(store, tmp_path / "serving-repo")
    assert not (tmp_path / "escape").exists() and not (tmp_path / "serving-repo").exists()
