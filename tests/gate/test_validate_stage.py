"""The validate stage end to end in a real Triton: good passes, damaged fails, bad config never starts one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from core.manifest import manifest_digest, model_digests
from core.params import load_group
from core.stage import StageError
from core.contract import PackageParams
from serving.triton.packaging import package
from pipelines.validate import validate_version
from tests.conftest import ROOT
from validation.accuracy import GateParams

pytestmark = [pytest.mark.triton, pytest.mark.slow]

GATE = GateParams(min_accuracy=0.9, max_drop=0.05, max_p95_ms=5000.0, concurrency=8, timeout_s=60.0)


def _package(checkpoint: Path, repo: Path, version: int) -> None:
    params = load_group("package", PackageParams, ROOT / "params.yaml").model_copy(update={"version": version})
    package(checkpoint, ROOT / "serving/backend/model.py", repo, "qwen3-vl", params)


def _damaged_copy(src: Path, dest: Path) -> Path:
    """The same model with its text embeddings scrambled: it still loads and answers, wrongly."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dest)
    weights = dest / "model.safetensors"
    tensors = load_file(weights)
    generator = torch.Generator().manual_seed(0)
    for name, tensor in tensors.items():
        if name.endswith("embed_tokens.weight"):
            tensors[name] = tensor[torch.randperm(tensor.shape[0], generator=generator)]
    save_file(tensors, weights, metadata={"format": "pt"})
    return dest


def test_gate_passes_a_good_version(tiny_checkpoint: Path, small_golden: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _package(tiny_checkpoint, repo, version=3)
    served = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    metrics, latency = validate_version(repo, "qwen3-vl-v3", 3, small_golden, 1.0, GATE, tmp_path / "out")
    assert metrics["passed"] is True, metrics["failures"]
    assert metrics["accuracy"] >= 0.95 and metrics["config_errors"] == 0
    assert set(metrics["per_category"]) == {"color", "count", "shape"}
    assert 0 < latency["p50_ms"] <= latency["p95_ms"]
    assert "p50_ms" not in metrics  # timings vary by machine; the tracked verdict must not
    # Validation writes nothing into what it validated (no bytecode next to model.py), and says what it served.
    assert {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()} == served
    assert metrics["served_digest"] == manifest_digest(model_digests(repo / "qwen3-vl-v3", "3"))
    assert len((tmp_path / "out/results.jsonl").read_text().splitlines()) == 60
    assert "PASSED" in (tmp_path / "out/report.html").read_text()


def test_gate_fails_a_damaged_version_naming_the_rule(
    tiny_checkpoint: Path, small_golden: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    _package(_damaged_copy(tiny_checkpoint, tmp_path / "damaged"), repo, version=4)
    metrics, _ = validate_version(repo, "qwen3-vl-v4", 4, small_golden, 1.0, GATE, tmp_path / "out")
    assert metrics["passed"] is False
    failures = "\n".join(metrics["failures"])
    assert "validate.min_accuracy: accuracy" in failures
    assert "validate.max_drop: accuracy dropped" in failures
    assert "FAILED" in (tmp_path / "out/report.html").read_text()


def test_config_error_stops_the_stage_before_any_triton_start(
    tiny_checkpoint: Path, small_golden: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serving.triton import launcher as triton_launcher

    repo = tmp_path / "repo"
    _package(tiny_checkpoint, repo, version=5)
    config = repo / "qwen3-vl-v5/config.pbtxt"
    config.write_text(config.read_text().replace("max_batch_size: 8", "max_batch_size: -2"))

    def no_server(*args: object, **kwargs: object) -> None:
        raise AssertionError("Triton was started despite a config error")

    monkeypatch.setattr(triton_launcher.TritonServer, "start", no_server)
    with pytest.raises(StageError) as err:
        validate_version(repo, "qwen3-vl-v5", 5, small_golden, 1.0, GATE, tmp_path / "out")
    assert "no server was started" in str(err.value)
    assert "config.pbtxt:" in str(err.value) and "max_batch_size" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_a_version_triton_cannot_load_fails_validation_with_a_message(
    tiny_checkpoint: Path, small_golden: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    _package(tiny_checkpoint, repo, version=6)
    (repo / "qwen3-vl-v6/6/model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(StageError, match="qwen3-vl-v6 version 6 could not be served, so it fails validation"):
        validate_version(repo, "qwen3-vl-v6", 6, small_golden, 1.0, GATE, tmp_path / "out")
