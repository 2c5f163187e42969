"""The validate stage end to end in a real Triton: good passes, damaged fails, bad config never starts one.

The reference is the real base model: the tiny checkpoint's in-process answers (the base_model stage's
own function), paired question by question with what Triton serves.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from core.contract import PackageParams
from core.evaluate import Answer
from core.golden import read_answers
from core.manifest import manifest_digest, model_digests
from core.params import EvalParams, ModelParams, load_group
from core.stage import StageError
from pipelines.base_model import evaluate_base_model
from pipelines.validate import validate_version
from serving.triton.packaging import package
from tests.conftest import ROOT
from validation.accuracy import GateParams

pytestmark = [pytest.mark.triton, pytest.mark.slow]

# 60 golden rows bound the drop at 6.0 points at best (z^2 / (n + z^2) with no discordant pairs), so the
# non-inferiority margin here is 10 points; the 300-row pipeline set uses params.yaml's 2.
GATE = GateParams(
    min_accuracy=0.9,
    min_category_accuracy=0.85,
    max_drop=0.10,
    confidence=0.95,
    max_p95_ms=5000.0,
    concurrency=8,
    timeout_s=60.0,
)


@pytest.fixture(scope="module")
def base_answers(tiny_checkpoint: Path, small_golden: Path) -> list[Answer]:
    model = ModelParams(source=str(tiny_checkpoint), device="cpu", dtype="auto")
    _, answers = evaluate_base_model(model, load_group("eval", EvalParams, ROOT / "params.yaml"), small_golden)
    return answers


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


def test_gate_passes_a_good_version(
    tiny_checkpoint: Path, small_golden: Path, base_answers: list[Answer], tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    _package(tiny_checkpoint, repo, version=3)
    served = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    answers = tmp_path / "answers.jsonl"
    metrics, latency = validate_version(
        repo, "qwen3-vl-v3", 3, small_golden, base_answers, GATE, tmp_path / "out", answers
    )
    assert metrics["passed"] is True, metrics["failures"]
    # The served answers, in the base model's shape and order (no timings: DVC hashes this file).
    served_answers = read_answers(answers)
    assert [a.id for a in served_answers] == [a.id for a in base_answers]
    assert sum(a.correct for a in served_answers) / 60 == pytest.approx(metrics["accuracy"], abs=1e-4)
    assert "latency" not in answers.read_text()
    assert metrics["accuracy"] >= 0.95 and metrics["config_errors"] == 0
    # The same weights served: the answers agree with the base model's on (nearly) every question.
    paired = metrics["paired"]
    assert paired["b"] + paired["c"] <= 2 and paired["drop_high"] < GATE.max_drop
    assert paired["b"] + paired["c"] + paired["both_correct"] + paired["both_wrong"] == 60
    assert metrics["reference_accuracy"] == round(sum(a.correct for a in base_answers) / 60, 4)
    assert {"mcnemar_p", "mcnemar_test", "drop_low", "confidence", "rows_needed"} <= set(paired)
    assert set(metrics["per_category"]) == {"color", "count", "shape"}
    assert 0 < latency["p50_ms"] <= latency["p95_ms"]
    assert "p50_ms" not in metrics  # timings vary by machine; the tracked verdict must not
    # Validation writes nothing into what it validated (no bytecode next to model.py), and says what it served.
    assert {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()} == served
    assert metrics["served_digest"] == manifest_digest(model_digests(repo / "qwen3-vl-v3", "3"))
    results = (tmp_path / "out/results.jsonl").read_text().splitlines()
    assert len(results) == 60 and all('"base_correct":' in line for line in results)
    assert "PASSED" in (tmp_path / "out/report.html").read_text()
    assert (tmp_path / "out/power.json").is_file()


def test_gate_fails_a_damaged_version_naming_the_rule(
    tiny_checkpoint: Path, small_golden: Path, base_answers: list[Answer], tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    _package(_damaged_copy(tiny_checkpoint, tmp_path / "damaged"), repo, version=4)
    metrics, _ = validate_version(repo, "qwen3-vl-v4", 4, small_golden, base_answers, GATE, tmp_path / "out")
    assert metrics["passed"] is False
    failures = "\n".join(metrics["failures"])
    assert "validate.min_accuracy: accuracy" in failures
    assert "validate.min_category_accuracy: category" in failures
    assert "validate.max_drop: accuracy dropped" in failures
    paired = metrics["paired"]
    assert paired["b"] > paired["c"] and paired["drop_low"] > GATE.max_drop  # a drop shown to exceed it
    assert paired["mcnemar_p"] < 0.001
    assert "FAILED" in (tmp_path / "out/report.html").read_text()


def test_config_error_stops_the_stage_before_any_triton_start(
    tiny_checkpoint: Path,
    small_golden: Path,
    base_answers: list[Answer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
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
        validate_version(repo, "qwen3-vl-v5", 5, small_golden, base_answers, GATE, tmp_path / "out")
    assert "no server was started" in str(err.value)
    assert "config.pbtxt:" in str(err.value) and "max_batch_size" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_a_version_triton_cannot_load_fails_validation_with_a_message(
    tiny_checkpoint: Path, small_golden: Path, base_answers: list[Answer], tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    _package(tiny_checkpoint, repo, version=6)
    (repo / "qwen3-vl-v6/6/model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(StageError, match="qwen3-vl-v6 version 6 could not be served, so it fails validation"):
        validate_version(repo, "qwen3-vl-v6", 6, small_golden, base_answers, GATE, tmp_path / "out")


def test_stale_base_answers_stop_the_stage_before_any_triton_start(
    tiny_checkpoint: Path,
    small_golden: Path,
    base_answers: list[Answer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from serving.triton import launcher as triton_launcher

    repo = tmp_path / "repo"
    _package(tiny_checkpoint, repo, version=7)

    def no_server(*args: object, **kwargs: object) -> None:
        raise AssertionError("Triton was started without a valid pairing")

    monkeypatch.setattr(triton_launcher.TritonServer, "start", no_server)
    with pytest.raises(StageError, match=r"1 questions unanswered.*dvc repro base_model"):
        validate_version(repo, "qwen3-vl-v7", 7, small_golden, base_answers[1:], GATE, tmp_path / "out")
