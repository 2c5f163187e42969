"""The package stage: one complete Triton model per build, others untouched, never half a model."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from core.contract import Machine, parse_config
from core.stage import StageError
from pipelines.package import main
from serving.triton import packaging
from serving.triton.packaging import package, this_machine, warmup_messages
from tests.serving.conftest import BACKEND, MODEL, Packager, serving_params


def test_writes_a_whole_model_with_its_own_config(fake_checkpoint: Path, tmp_path: Path) -> None:
    repository = tmp_path / "triton-models"

    result = package(fake_checkpoint, BACKEND, repository, MODEL, serving_params(version=3))

    model_dir = repository / "qwen3-vl-v3"
    version = model_dir / "3"
    assert sorted(p.name for p in model_dir.iterdir()) == ["3", "config.pbtxt", "warmup"]
    assert sorted(p.name for p in version.iterdir()) == sorted(
        [p.name for p in fake_checkpoint.iterdir()] + ["model.py"]
    )
    assert (version / "model.py").read_text() == BACKEND.read_text()
    config = parse_config((model_dir / "config.pbtxt").read_text())
    assert config.name == "qwen3-vl-v3"
    assert list(config.version_policy.specific.versions) == [3]
    assert (model_dir / "warmup" / "messages.bin").read_bytes() == warmup_messages()
    assert (result.model, result.triton_model, result.version, result.files) == ("qwen3-vl", "qwen3-vl-v3", 3, 6)
    assert result.bytes == sum(p.stat().st_size for p in version.iterdir())
    assert [p.name for p in repository.iterdir() if p.name.startswith(".")] == []


def test_new_build_leaves_others_alone(fake_checkpoint: Path, tmp_path: Path, packager: Packager) -> None:
    tmp_path = tmp_path / "repo"
    first = packager(fake_checkpoint, tmp_path, version=1)
    marker = first / "served-by-triton"
    marker.write_text("still here")

    packager(fake_checkpoint, tmp_path, version=2, max_batch_size=4, preferred_batch_sizes=[4])

    assert marker.read_text() == "still here"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qwen3-vl-v1", "qwen3-vl-v2"]
    # Each build keeps its own serving config.
    configs = [parse_config((tmp_path / name / "config.pbtxt").read_text()) for name in ("qwen3-vl-v1", "qwen3-vl-v2")]
    assert [c.max_batch_size for c in configs] == [8, 4]


def test_rebuilding_a_version_replaces_it_whole(fake_checkpoint: Path, tmp_path: Path, packager: Packager) -> None:
    version = packager(fake_checkpoint, tmp_path, version=1)
    (version / "stale.bin").write_text("from an earlier build")

    packager(fake_checkpoint, tmp_path, version=1)

    assert not (version / "stale.bin").exists()
    assert (version / "model.py").is_file()


def test_failure_mid_copy_leaves_the_old_build(fake_checkpoint: Path, tmp_path: Path, packager: Packager) -> None:
    tmp_path = tmp_path / "repo"
    packager(fake_checkpoint, tmp_path, version=1)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    # A dangling link (say, a DVC cache link whose target is gone) fails the copy halfway through.
    (fake_checkpoint / "shard-2.safetensors").symlink_to(tmp_path / "gone")

    with pytest.raises(OSError, match="shard-2"):
        package(fake_checkpoint, BACKEND, tmp_path, MODEL, serving_params(version=1, max_new_tokens=3))

    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qwen3-vl-v1"]


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "processor_config.json"])
def test_incomplete_checkpoint_is_refused_by_name(fake_checkpoint: Path, tmp_path: Path, missing: str) -> None:
    (fake_checkpoint / missing).unlink()

    with pytest.raises(StageError, match=str(fake_checkpoint)) as error:
        package(fake_checkpoint, BACKEND, tmp_path / "repo", MODEL, serving_params())

    assert {"config.json": "config", "model.safetensors": "weights"}.get(missing, "image processor") in str(error.value)
    assert not (tmp_path / "repo").exists()


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
    registry = {"model_name": MODEL, "experiment": "e"}
    path.write_text(json.dumps({"package": group, "registry": registry, "other": {"ignored": True}}))  # JSON is YAML
    return path


def _argv(checkpoint: Path, tmp_path: Path, params: Path) -> list[str]:
    return [
        f"--checkpoint={checkpoint}",
        f"--repository={tmp_path / 'repo'}",
        f"--metrics={tmp_path / 'metrics' / 'package.json'}",
        f"--backend={BACKEND}",
        f"--params={params}",
    ]


def test_bad_params_name_the_key(fake_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_argv(fake_checkpoint, tmp_path, _params_file(tmp_path / "params.yaml", version=0))) == 1
    assert "package.version" in capsys.readouterr().err


def test_main_writes_metrics(fake_checkpoint: Path, tmp_path: Path) -> None:
    assert main(_argv(fake_checkpoint, tmp_path, _params_file(tmp_path / "params.yaml", version=5))) == 0

    version = tmp_path / "repo" / "qwen3-vl-v5" / "5"
    size = sum(p.stat().st_size for p in version.iterdir())
    assert json.loads((tmp_path / "metrics" / "package.json").read_text()) == {
        "model": "qwen3-vl",
        "triton_model": "qwen3-vl-v5",
        "version": 5,
        "bytes": size,
        "files": 6,
        "instance_count": 1,
        "instance_kind": "cpu",
    }


def test_main_fails_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_argv(tmp_path / "nowhere", tmp_path, _params_file(tmp_path / "params.yaml"))) == 1
    assert "run the quantize stage first" in capsys.readouterr().err
    assert not (tmp_path / "metrics" / "package.json").exists()


def test_an_auto_instance_count_is_derived_from_the_packaging_machine(
    fake_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(packaging, "this_machine", lambda: Machine(cores=6, memory_bytes=64 * 2**30))

    result = package(fake_checkpoint, BACKEND, tmp_path, MODEL, serving_params(instance_count="auto"))

    [group] = parse_config((tmp_path / "qwen3-vl-v1" / "config.pbtxt").read_text()).instance_group
    assert (group.count, result.instance_count, result.instance_kind) == (7, 7, "cpu")


def test_an_auto_gpu_build_gets_two_instances_per_gpu(fake_checkpoint: Path, tmp_path: Path) -> None:
    result = package(
        fake_checkpoint, BACKEND, tmp_path, MODEL, serving_params(instance_count="auto", instance_kind="gpu")
    )

    [group] = parse_config((tmp_path / "qwen3-vl-v1" / "config.pbtxt").read_text()).instance_group
    assert (group.count, result.instance_count) == (2, 2)


def test_this_machine_reports_what_the_process_may_use() -> None:
    machine = this_machine()

    assert 1 <= machine.cores <= len(os.sched_getaffinity(0))
    assert machine.memory_bytes > 2**28
