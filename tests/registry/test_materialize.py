"""Materialize: one verified folder per served version, from the registry, written atomically."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from core.manifest import tree_digests
from pipelines import register as stage
from pipelines.register import RegisterInputs
from registry import materialize, rollout
from registry.errors import NotFoundError, RegistryError, TamperedArtifactError
from registry.events import Actor
from registry.settings import RegistrySettings
from registry.state import TAG_MANIFEST, TAG_TRITON_MODEL, resolve
from registry.store import Store

pytestmark = pytest.mark.mlflow


def _champion_and_canary(
    settings: RegistrySettings, store: Store, actor: Actor, make_project: Callable[..., RegisterInputs]
) -> tuple[RegisterInputs, RegisterInputs]:
    first, second = make_project(weights=b"champion"), make_project(weights=b"canary")
    stage.register(first, settings, actor)
    rollout.promote_to_champion(store, actor)
    stage.register(second, settings, actor)
    rollout.promote_to_canary(store, actor, weight=10)
    return first, second


def _artifact_on_disk(settings: RegistrySettings, store: Store, alias: str) -> Path:
    """Where the server keeps a version's artifact (mlflow-artifacts:/<path> under its destination)."""
    info = resolve(store, alias)  # type: ignore[arg-type]
    assert info is not None
    return settings.artifacts_dir / info.source.removeprefix("mlflow-artifacts:/")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_each_served_version_materializes_into_its_own_verified_folder(
    settings: RegistrySettings,
    store: Store,
    actor: Actor,
    make_project: Callable[..., RegisterInputs],
    tmp_path: Path,
) -> None:
    first, second = _champion_and_canary(settings, store, actor, make_project)
    out = tmp_path / "served"
    (out / "7").mkdir(parents=True)  # another version's folder is left alone

    result = materialize.materialize_serving(store, out)

    assert result.champion is not None and result.canary is not None
    assert (result.champion.version, result.canary.version) == (1, 2)
    served = (result.champion.served_model, result.canary.served_model)
    assert served == (f"{store.model}-v1", f"{store.model}-v2")
    assert sorted(p.name for p in out.iterdir()) == ["1", "2", "7"]
    for number, inputs in ((1, first), (2, second)):
        folder = out / str(number)
        assert sorted(p.name for p in folder.iterdir()) == ["config.pbtxt", "version", "warmup"]
        packaged = inputs.triton_repo / "qwen3-vl-v1"
        assert tree_digests(folder / "version") == tree_digests(packaged / "1")
        assert (folder / "config.pbtxt").read_bytes() == (packaged / "config.pbtxt").read_bytes()
        assert (folder / "warmup" / "messages.bin").read_bytes() == b"\x02\x00\x00\x00hi"
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temp folders left behind"


def test_one_changed_byte_is_refused_and_the_previous_folder_is_untouched(
    settings: RegistrySettings,
    store: Store,
    actor: Actor,
    make_project: Callable[..., RegisterInputs],
    tmp_path: Path,
) -> None:
    _champion_and_canary(settings, store, actor, make_project)
    dest = tmp_path / "served" / "2"
    assert materialize.materialize_version(store, 2, dest) == dest.absolute()
    before = _snapshot(dest)
    weights = _artifact_on_disk(settings, store, "canary") / "version" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[0] ^= 0x01
    weights.write_bytes(bytes(data))

    with pytest.raises(TamperedArtifactError, match=r"/model/version/model\.safetensors: modified") as caught:
        materialize.materialize_version(store, 2, dest)

    canary = resolve(store, "canary")
    assert canary is not None and canary.source in str(caught.value)
    assert _snapshot(dest) == before
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")], "temp folders left behind"


def test_injected_and_missing_files_are_refused(
    settings: RegistrySettings,
    store: Store,
    actor: Actor,
    make_project: Callable[..., RegisterInputs],
    tmp_path: Path,
) -> None:
    _champion_and_canary(settings, store, actor, make_project)
    champion = _artifact_on_disk(settings, store, "champion")
    (champion / "version" / "__pycache__").mkdir()
    (champion / "version" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"evil")
    with pytest.raises(TamperedArtifactError, match=r"version/__pycache__/model\.cpython-311\.pyc: unexpected file"):
        materialize.materialize_version(store, 1, tmp_path / "1")
    assert not (tmp_path / "1").exists()
    (_artifact_on_disk(settings, store, "canary") / "warmup" / "messages.bin").unlink()
    with pytest.raises(TamperedArtifactError, match=r"warmup/messages\.bin: missing"):
        materialize.materialize_version(store, 2, tmp_path / "2")


def test_an_edited_manifest_or_manifest_tag_is_refused(
    settings: RegistrySettings,
    store: Store,
    actor: Actor,
    make_project: Callable[..., RegisterInputs],
    tmp_path: Path,
) -> None:
    _champion_and_canary(settings, store, actor, make_project)
    # Someone with artifact-store access swaps weights and rewrites manifest.json to match.
    run_root = _artifact_on_disk(settings, store, "canary").parent
    weights = run_root / "model" / "version" / "model.safetensors"
    weights.write_bytes(b"evil weights")
    listed = json.loads((run_root / "manifest.json").read_text())
    listed["files"]["version/model.safetensors"] = "0" * 64
    (run_root / "manifest.json").write_text(json.dumps(listed))
    with pytest.raises(TamperedArtifactError, match=r"differs from the manifest\.sha256"):
        materialize.materialize_version(store, 2, tmp_path / "2")
    # ... or edits the version tag instead.
    store.client.set_model_version_tag(settings.model_name, "1", TAG_MANIFEST, "0" * 64)
    with pytest.raises(TamperedArtifactError, match=r"manifest\.sha256"):
        materialize.materialize_version(store, 1, tmp_path / "1")


def test_nothing_to_serve_and_a_model_that_does_not_exist(
    settings: RegistrySettings, store: Store, actor: Actor, make_project: Callable[..., RegisterInputs], tmp_path: Path
) -> None:
    with pytest.raises(NotFoundError, match="does not exist") as missing:
        materialize.materialize_serving(store, tmp_path / "repo")
    assert "dvc repro" in str(missing.value) and "promote" not in str(missing.value)
    stage.register(make_project(), settings, actor)  # a candidate only
    with pytest.raises(NotFoundError, match="no champion or canary"):
        materialize.materialize_serving(store, tmp_path / "repo")
    with pytest.raises(NotFoundError, match="v9 does not exist"):
        materialize.materialize_version(store, 9, tmp_path / "9")


def test_a_path_like_triton_model_tag_is_refused(
    settings: RegistrySettings,
    store: Store,
    actor: Actor,
    make_project: Callable[..., RegisterInputs],
    tmp_path: Path,
) -> None:
    _champion_and_canary(settings, store, actor, make_project)
    store.client.set_model_version_tag(settings.model_name, "2", TAG_TRITON_MODEL, "../escape")
    with pytest.raises(RegistryError, match=r"triton\.model tag is refused.*not a plain name"):
        materialize.materialize_version(store, 2, tmp_path / "served" / "2")
    assert not (tmp_path / "escape").exists() and not (tmp_path / "served" / "2").exists()
