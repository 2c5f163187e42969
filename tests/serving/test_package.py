"""The package stage: one complete version per run, others untouched, never a half version."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from pipelines.errors import StageError
from pipelines.package import load_params, main, package, warmup_messages
from pipelines.pbtxt import parse_config
from tests.serving.conftest import BACKEND, Packager, serving_params


def test_writes_version_config_and_warmup(fake_checkpoint: Path, tmp_path: Path) -> None:
    repository = tmp_path / "triton-models"

    result = package(fake_checkpoint, BACKEND, repository, serving_params(version=3))

    model_dir = repository / "qwen3-vl"
    version = model_dir / "3"
    assert sorted(p.name for p in version.iterdir()) == sorted(
        [p.name for p in fake_checkpoint.iterdir()] + ["model.py"]
    )
    assert (version / "model.py").read_text() == BACKEND.read_text()
    assert parse_config((model_dir / "config.pbtxt").read_text()).name == "qwen3-vl"
    assert (model_dir / "warmup" / "messages.bin").read_bytes() == warmup_messages()
    assert (result.model, result.version, result.files) == ("qwen3-vl", 3, 6)
    assert result.bytes == sum(p.stat().st_size for p in version.iterdir())
    assert [p.name for p in model_dir.iterdir() if p.name.startswith(".")] == []


def test_new_version_leaves_others_alone(fake_checkpoint: Path, tmp_path: Path, packager: Packager) -> None:
    first = packager(fake_checkpoint, tmp_path, version=1)
    marker = first / "served-by-triton"
    marker.write_text("still here")

    packager(fake_checkpoint, tmp_path, version=2)

    assert marker.read_text() == "still here"
    assert sorted(p.name for p in (tmp_path / "qwen3-vl").iterdir()) == ["1", "2", "config.pbtxt", "warmup"]


def test_rebuilding_a_version_replaces_it_whole(fake_checkpoint: Path, tmp_path: Path, packager: Packager) -> None:
    version = packager(fake_checkpoint, tmp_path, version=1)
    (version / "stale.bin").write_text("from an earlier build")

    packager(fake_checkpoint, tmp_path, version=1)

    assert not (version / "stale.bin").exists()
    assert (version / "model.py").is_file()


def test_failure_mid_copy_leaves_no_half_version(fake_checkpoint: Path, tmp_path: Path, packager: Packager) -> None:
    packager(fake_checkpoint, tmp_path, version=1)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.joinpath("qwen3-vl").rglob("*") if p.is_file()}
    # A dangling link (say, a DVC cache link whose target is gone) fails the copy halfway through.
    (fake_checkpoint / "shard-2.safetensors").symlink_to(tmp_path / "gone")

    with pytest.raises(OSError, match="shard-2"):
        package(fake_checkpoint, BACKEND, tmp_path, serving_params(version=2, max_new_tokens=3))

    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.joinpath("qwen3-vl").rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in (tmp_path / "qwen3-vl").iterdir()) == ["1", "config.pbtxt", "warmup"]


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "processor_config.json"])
def test_incomplete_checkpoint_is_refused_by_name(fake_checkpoint: Path, tmp_path: Path, missing: str) -> None:
    (fake_checkpoint / missing).unlink()

    with pytest.raises(StageError, match=str(fake_checkpoint)) as error:
        package(fake_checkpoint, BACKEND, tmp_path, serving_params())

    assert {"config.json": "config", "model.safetensors": "weights"}.get(missing, "image processor") in str(error.value)
    assert not (tmp_path / "qwen3-vl").exists()


def test_warmup_file_is_one_serialized_conversation_with_an_image() -> None:
    data = warmup_messages()

    (length,) = struct.unpack("<I", data[:4])
    assert length == len(data) - 4
    (message,) = json.loads(data[4:])
    kinds = [part["type"] for part in message["content"]]
    assert message["role"] == "user" and kinds == ["image_url", "text"]
    assert message["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")


def _params_file(path: Path, **overrides: object) -> Path:
    group = serving_params().model_dump(mode="json") | overrides
    path.write_text(json.dumps({"package": group, "other": {"ignored": True}}))  # JSON is YAML
    return path


def test_load_params_names_the_bad_key(tmp_path: Path) -> None:
    path = _params_file(tmp_path / "params.yaml", version=0)

    with pytest.raises(StageError, match=r"package\.version"):
        load_params(path)


def test_load_params_reads_the_group(tmp_path: Path) -> None:
    assert load_params(_params_file(tmp_path / "params.yaml", version=9)).version == 9


def test_main_writes_metrics(fake_checkpoint: Path, tmp_path: Path) -> None:
    metrics = tmp_path / "metrics" / "package.json"
    argv = [
        f"--checkpoint={fake_checkpoint}",
        f"--repository={tmp_path / 'repo'}",
        f"--metrics={metrics}",
        f"--backend={BACKEND}",
        f"--params={_params_file(tmp_path / 'params.yaml', version=5)}",
    ]

    assert main(argv) == 0
    version = tmp_path / "repo" / "qwen3-vl" / "5"
    size = sum(p.stat().st_size for p in version.iterdir())
    assert json.loads(metrics.read_text()) == {"model": "qwen3-vl", "version": 5, "bytes": size, "files": 6}


def test_main_fails_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        f"--checkpoint={tmp_path / 'nowhere'}",
        f"--repository={tmp_path / 'repo'}",
        f"--metrics={tmp_path / 'm.json'}",
        f"--backend={BACKEND}",
        f"--params={_params_file(tmp_path / 'params.yaml')}",
    ]

    assert main(argv) == 1
    assert "run the quantize stage first" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()
