"""scripts/gpu_smoke.sh: valid shell, refuses clearly without a GPU, and its Python half works (the
checkpoint's architecture, the benchmark against a real Triton). The full run needs a GPU (marker `gpu`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu_smoke.sh"
BASH = shutil.which("bash") or "/bin/bash"


def run(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BASH, str(SCRIPT)],
        env={"TMPDIR": str(tmp_path / "tmp"), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def fake_nvidia_smi(folder: Path, body: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / "nvidia-smi"
    path.write_text(f"#!{BASH}\n{body}\n")
    path.chmod(0o755)
    return folder


def test_syntax() -> None:
    subprocess.run([BASH, "-n", str(SCRIPT)], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (Debian: shellcheck)")
def test_shellcheck_finds_nothing() -> None:
    result = subprocess.run(
        ["shellcheck", str(SCRIPT), str(ROOT / "containers" / "mlflow-entrypoint.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "")


def test_strict_mode_and_executable() -> None:
    assert "\nset -euo pipefail\n" in SCRIPT.read_text()
    assert os.access(SCRIPT, os.X_OK)


def test_refuses_without_nvidia_smi(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    (tmp_path / "tmp").mkdir()

    result = run({"PATH": str(empty)}, tmp_path)

    assert result.returncode == 1
    assert result.stderr.startswith("gpu_smoke: no NVIDIA GPU: nvidia-smi is not on PATH")
    assert "make demo" in result.stderr
    assert list((tmp_path / "tmp").iterdir()) == []  # nothing was copied or built


def test_refuses_when_nvidia_smi_sees_no_gpu(tmp_path: Path) -> None:
    failure = "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver."
    bin_dir = fake_nvidia_smi(tmp_path / "bin", f'echo "{failure}"; exit 9')
    (tmp_path / "tmp").mkdir()

    result = run({"PATH": str(bin_dir)}, tmp_path)

    assert result.returncode == 1
    assert "found no usable NVIDIA GPU" in result.stderr
    assert "could not communicate with the NVIDIA driver" in result.stderr


def test_refuses_without_the_project_environment(tmp_path: Path) -> None:
    bin_dir = fake_nvidia_smi(tmp_path / "bin", 'echo "0, NVIDIA H100, 81559 MiB"')
    (tmp_path / "tmp").mkdir()

    result = run({"PATH": str(bin_dir), "VENV": str(tmp_path / "no-venv")}, tmp_path)

    assert result.returncode == 1
    assert "run 'make install' first" in result.stderr


def test_refuses_a_torch_without_cuda(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine's torch sees a GPU")
    bin_dir = fake_nvidia_smi(tmp_path / "bin", 'echo "0, NVIDIA H100, 81559 MiB"')
    (tmp_path / "tmp").mkdir()

    result = run({"PATH": str(bin_dir), "VENV": str(Path(sys.executable).parent.parent)}, tmp_path)

    assert result.returncode == 1
    assert "torch.cuda.is_available() is False" in result.stderr


def test_the_gpu_checkpoint_is_a_valid_qwen3_vl_of_gpu_size() -> None:
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gpu_smoke
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    from tiny_model import build

    config = gpu_smoke.gpu_config(build.build_tokenizer())
    with torch.device("meta"):  # the architecture without allocating its weights
        model = Qwen3VLForConditionalGeneration(config)
    parameters = sum(p.numel() for p in model.parameters())
    assert 300e6 < parameters < 600e6
    assert config.text_config.hidden_size == config.vision_config.out_hidden_size
    assert sum(config.text_config.rope_parameters["mrope_section"]) * 2 == config.text_config.head_dim


@pytest.mark.slow
@pytest.mark.triton
def test_bench_serves_a_packaged_model_and_reports_json(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from serving.triton.packaging import package
    from tests.serving.conftest import BACKEND, MODEL, serving_params

    package(tiny_checkpoint, BACKEND, tmp_path / "repo", MODEL, serving_params(max_images=1))
    bin_dir = fake_nvidia_smi(tmp_path / "bin", "echo 1234")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}

    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_smoke.py"), "bench", str(tmp_path / "repo"), "qwen3-vl-v1",
         "--requests", "8", "--seconds", "1", "--run-dir", str(tmp_path / "run")],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["model"] == "qwen3-vl-v1"
    assert figures["p50_ms"] > 0 and figures["rps_c1"] > 0 and figures["rps_c8"] > 0
    assert figures["gpu_mib_loaded"] == [1234]
    assert (figures["instances"], figures["gpu_mib_per_instance"]) == (1, [0])  # the fake GPU's memory never moves


@pytest.mark.gpu
@pytest.mark.slow
def test_the_whole_gpu_path(tmp_path: Path) -> None:  # pragma: no cover - needs an NVIDIA GPU
    import torch

    if shutil.which("nvidia-smi") is None or not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU and a CUDA build of torch")
    result = subprocess.run(
        [BASH, str(SCRIPT)], env={**os.environ, "TMPDIR": str(tmp_path)}, capture_output=True, text=True, timeout=900,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["rps_c8"] > figures["rps_c1"] > 0
