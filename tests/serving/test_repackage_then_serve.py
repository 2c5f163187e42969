"""The package stage run twice, then ``make triton``'s command over the repository: Triton serves it.

A swap used to leave ``.qwen3-vl-v1.previous`` in the repository, and Triton, which takes every
subfolder for a model, refused the whole repository over it and exited.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from serving.triton.launcher import free_ports
from tests.conftest import ROOT, as_from_a_terminal

pytestmark = [pytest.mark.slow, pytest.mark.triton]


def _package(params: dict[str, object], tmp_path: Path, checkpoint: Path, repository: Path, run: int) -> None:
    params_file = tmp_path / f"params-{run}.yaml"
    params_file.write_text(yaml.safe_dump(params))
    command = [
        sys.executable, "-m", "pipelines.package", "--checkpoint", str(checkpoint),
        "--backend", str(ROOT / "serving" / "backend" / "model.py"), "--repository", str(repository),
        "--metrics", str(tmp_path / f"package-{run}.json"), "--params", str(params_file),
    ]  # fmt: skip
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=300)


def test_a_repository_packaged_twice_is_served(tiny_checkpoint: Path, tmp_path: Path) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    model = f"{params['registry']['model_name']}-v{params['package']['version']}"
    repository = tmp_path / "triton-models"
    _package(params, tmp_path, tiny_checkpoint, repository, 1)
    params["package"]["max_new_tokens"] = params["package"]["max_new_tokens"] + 1  # a second, different build
    _package(params, tmp_path, tiny_checkpoint, repository, 2)
    assert sorted(p.name for p in repository.iterdir()) == [model]  # nothing else for Triton to trip on

    http, grpc, metrics = free_ports(3)
    env = os.environ | {
        "PYTHONPATH": str(ROOT),
        "TRITON_HTTP_PORT": str(http),
        "TRITON_GRPC_PORT": str(grpc),
        "TRITON_METRICS_PORT": str(metrics),
        "TRITON_EXIT_TIMEOUT_SECS": "1",
    }
    log = tmp_path / "triton.out"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "serving.triton", "--model-repository", str(repository), "--run-dir", str(tmp_path)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=as_from_a_terminal,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        ready = False
        while not ready and server.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(f"http://127.0.0.1:{http}/v2/models/{model}/ready", timeout=2).status_code == 200
            time.sleep(0.5)
        assert ready, f"Triton did not serve {model} (exit {server.poll()}):\n{log.read_text(errors='replace')[-3000:]}"
        config = httpx.get(f"http://127.0.0.1:{http}/v2/models/{model}/config", timeout=10).json()
        assert config["parameters"]["MAX_NEW_TOKENS"]["string_value"] == str(params["package"]["max_new_tokens"])
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
