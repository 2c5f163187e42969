"""Names that become paths cannot climb out: the gateway's ``model`` and ``X-Model-Version``, a version's
``triton.model`` tag, and the entries of its manifest. Materialize refuses them and writes nothing
outside the folder it was given."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.manifest import manifest_digest
from pipelines import register as register_stage
from registry import manifest, materialize, rollout
from registry.errors import RegistryError, TamperedArtifactError
from registry.state import TAG_MANIFEST, TAG_SERVED_DIGEST, TAG_TRITON_MODEL, get_version
from registry.store import Store
from tests.stack_fixture import ACTOR, Stack, question, write_build

pytestmark = [pytest.mark.slow, pytest.mark.triton, pytest.mark.mlflow]

MODELS = ["../x", "..", "qwen3-vl-v1/../2", "qwen3-vl/../../etc/passwd", "%2e%2e", "qwen3-vl-v%2e%2e", "/etc/passwd"]
PINS = ["../x", "1/../2", "%2e%2e", "1%2f..%2f2", "v1/..", "..", "-1", "0", "1 2", "0x1", "1e3"]


def upstream_attempts(url: str) -> float:
    """Every attempt that reached Triton: the split's live ones and those outside it (pins, retries)."""
    lines = httpx.get(f"{url}/metrics", timeout=5).text.splitlines()
    series = ("gateway_upstream_requests_total{", "gateway_unjudged_requests_total{")
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(series))


def test_the_gateway_refuses_model_names_and_pins_that_are_paths(stack: Stack) -> None:
    gateway = stack.gateway_urls[0]
    before = upstream_attempts(gateway)
    with httpx.Client(timeout=30) as client:
        for model in MODELS:
            for base in (stack.edge_url, gateway):
                response = client.post(f"{base}/v1/chat/completions", json={**question(0), "model": model})
                assert response.status_code == 404, (model, response.text)
                assert response.json()["error"]["code"] == "model_not_found"
        for pin in PINS:
            for base in (stack.edge_url, gateway):
                response = client.post(
                    f"{base}/v1/chat/completions", json=question(0), headers={"X-Model-Version": pin}
                )
                assert response.status_code == 400, (pin, response.text)
                assert response.json()["error"]["param"] == "X-Model-Version"
        # The control: a served version by either name is answered.
        ok = client.post(f"{gateway}/v1/chat/completions", json={**question(0), "model": "qwen3-vl-v1"})
        assert ok.status_code == 200, ok.text
    assert upstream_attempts(gateway) == before + 1  # none of the refused ones reached Triton


@pytest.fixture
def own_model(stack: Stack, tiny_checkpoint: Path, tmp_path: Path) -> tuple[Store, int]:
    """A registered model of this test's own in the stack's MLflow, with one version as champion."""
    tag = uuid.uuid4().hex[:8]
    settings = stack.settings.model_copy(update={"model_name": f"paths-{tag}", "experiment": f"paths-{tag}"})
    version = register_stage.register(write_build(tmp_path / "build", 1, tiny_checkpoint), settings, ACTOR).version
    store = Store(settings)
    rollout.promote_to_champion(store, ACTOR, version)
    return store, version


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


@pytest.mark.parametrize("name", ["..", "../escape", "a/../../escape", "/tmp/escape", "a/b", "", "qwen3-vl\\..\\x"])
def test_a_triton_model_tag_that_is_a_path_is_refused(own_model: tuple[Store, int], tmp_path: Path, name: str) -> None:
    store, version = own_model
    store.client.set_model_version_tag(store.model, str(version), TAG_TRITON_MODEL, name)
    out = tmp_path / "area" / "serving"
    out.mkdir(parents=True)

    with pytest.raises(RegistryError, match=r"triton\.model tag is refused"):
        materialize.materialize_serving(store, out)
    with pytest.raises(RegistryError, match=r"triton\.model tag is refused"):
        materialize.materialize_version(store, version, out / str(version))

    assert listing(tmp_path / "area") == ["serving"]
    assert not Path("/tmp/escape").exists()


def _store_file(stack: Stack, store: Store, version: int, relative: str) -> Path:
    source = get_version(store, version).source.removeprefix("mlflow-artifacts:/")  # <exp>/<run>/artifacts/model
    return stack.store_dir / "artifacts" / source.removesuffix("/model") / relative


@pytest.mark.parametrize("entry", ["../../escape.txt", "/tmp/escape.txt", "version/../../escape.txt", "./config.pbtxt"])
def test_a_manifest_naming_a_path_outside_the_artifact_is_refused(
    stack: Stack, own_model: tuple[Store, int], tmp_path: Path, entry: str
) -> None:
    """Someone with write access to the store and the tags: the manifest and both tags agree, but an
    entry climbs out of the artifact."""
    store, version = own_model
    path = _store_file(stack, store, version, manifest.MANIFEST_FILE)
    files: dict[str, Any] = manifest.Manifest.model_validate_json(path.read_bytes()).files
    files[entry] = hashlib.sha256(b"payload").hexdigest()
    forged = manifest.to_bytes(files)
    path.write_bytes(forged)
    store.client.set_model_version_tag(store.model, str(version), TAG_MANIFEST, manifest.sha256_bytes(forged))
    store.client.set_model_version_tag(store.model, str(version), TAG_SERVED_DIGEST, manifest_digest(files))
    dest = tmp_path / "area" / "served" / str(version)

    with pytest.raises(TamperedArtifactError, match="names a path outside the artifact"):
        materialize.materialize_version(store, version, dest)

    assert listing(tmp_path / "area") in ([], ["served"])  # nothing but (at most) the empty parent
    assert not Path("/tmp/escape.txt").exists() and not (tmp_path / "escape.txt").exists()


def test_a_link_planted_in_the_artifact_store_is_refused(
    stack: Stack, own_model: tuple[Store, int], tmp_path: Path
) -> None:
    store, version = own_model
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("not part of any model")
    _store_file(stack, store, version, "model/version/extra.txt").symlink_to(secret)
    dest = tmp_path / "area" / "served"

    # MLflow's server refuses to follow it; were it served, the manifest check would refuse an extra file.
    with pytest.raises(RegistryError, match=r"outside the artifact directory|version/extra\.txt: unexpected file"):
        materialize.materialize_version(store, version, dest)

    assert listing(tmp_path / "area") == []
