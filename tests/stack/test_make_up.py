"""``make up`` / ``make status`` / ``make down`` as a new user meets them, on free ports and a store
of the test's own: with no champion, ``up`` says so last and ``status`` names the command that makes
one; once one is promoted, ``up`` returns when it answers through nginx, and a chat request at once
after it is answered; ``down`` leaves nothing running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from pipelines import register as register_stage
from registry.settings import RegistrySettings
from serving.stack import running_pid
from serving.triton.launcher import free_ports
from tests.conftest import ROOT
from tests.stack_fixture import ACTOR, MODEL, TOKEN, question, write_build

pytestmark = [pytest.mark.slow, pytest.mark.triton, pytest.mark.mlflow]

NAMES = ["mlflow", "triton", "controller", "gateway-1", "gateway-2", "nginx"]


def _stack(command: str, run_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving.stack", command, "--run-dir", str(run_dir)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout.strip().splitlines()[-1]


def test_up_status_promote_up_chat_down(tmp_path: Path, tiny_checkpoint: Path) -> None:
    project, run_dir = tmp_path / "project", tmp_path / "run"
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump({"registry": {"model_name": MODEL, "experiment": "make-up"}}))
    mlflow, http, grpc, metrics, edge, internal, gw1, gw2 = free_ports(8)
    env = os.environ | {
        "PYTHONPATH": str(ROOT),
        "REGISTRY_PROJECT_DIR": str(project),
        "REGISTRY_PORT": str(mlflow),
        "TRITON_HTTP_PORT": str(http),
        "TRITON_GRPC_PORT": str(grpc),
        "TRITON_METRICS_PORT": str(metrics),
        "EDGE_PORT": str(edge),
        "EDGE_INTERNAL_PORT": str(internal),
        "EDGE_UPSTREAMS": f"127.0.0.1:{gw1},127.0.0.1:{gw2}",
        "GATEWAY_ADMIN_TOKEN": TOKEN,
        "STACK_CHAMPION_TIMEOUT_S": "300",
        # Gateways that adopt a promotion only seconds later: `up` right after the promotion must wait
        # for them (MLflow names the champion), not report "no champion yet" from their stale view.
        "GATEWAY_REGISTRY_POLL_S": "6",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    mlflow_url = f"http://127.0.0.1:{mlflow}"
    try:
        first = _stack("up", run_dir, env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert _last_line(first).startswith("no champion yet"), first.stdout
        assert f"MLFLOW_TRACKING_URI={mlflow_url} python -m registry promote --to champion" in _last_line(first)
        status = _stack("status", run_dir, env)
        for name in NAMES:
            assert f"{name:<11} running" in status.stdout, status.stdout
        assert "python -m registry promote --to champion" in _last_line(status), status.stdout

        # The new user's next step: a build registered as candidate, promoted with the named command.
        settings = RegistrySettings(
            tracking_uri=mlflow_url, project_dir=project, model_name=MODEL, experiment="make-up"
        )
        version = register_stage.register(write_build(project / "builds", 1, tiny_checkpoint), settings, ACTOR).version
        promote = subprocess.run(
            [sys.executable, "-m", "registry", "promote", "--to", "champion"],
            cwd=ROOT, env=env | {"MLFLOW_TRACKING_URI": mlflow_url}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert promote.returncode == 0, promote.stdout + promote.stderr

        again = _stack("up", run_dir, env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert _last_line(again) == f"serving: champion v{version} answers through nginx at http://127.0.0.1:{edge}/v1"
        # At once after `make up` returns: answered, by the champion.
        answer = httpx.post(f"http://127.0.0.1:{edge}/v1/chat/completions", json=question(0), timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-model-version"] == str(version)
        assert _last_line(_stack("status", run_dir, env)) == f"serving: champion v{version} is ready on every gateway"
    finally:
        down = _stack("down", run_dir, env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert all(running_pid(run_dir, name) is None for name in NAMES)
    assert "nothing was running" not in down.stdout
