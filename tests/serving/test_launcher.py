"""The Triton launcher: settings, environment checks, bounded start-up, clean stop."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.triton import launcher as triton_launcher
from serving.triton.__main__ import main as cli_main
from serving.triton.launcher import (
    TritonEnvironmentError,
    TritonServer,
    TritonStartError,
    check_environment,
    free_ports,
)
from serving.triton.settings import TritonSettings

SLOW_MODEL = """
import time


class TritonPythonModel:
    def initialize(self, args):
        time.sleep(60)
"""


def _settings(**overrides: object) -> TritonSettings:
    http, grpc, metrics = free_ports(3)
    values: dict[str, object] = {"http_port": http, "grpc_port": grpc, "metrics_port": metrics}
    return TritonSettings.model_validate(values | overrides)


def test_settings_default_to_loopback_and_the_project_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TRITON_HOST", "TRITON_HTTP_PORT", "TRITON_GRPC_PORT", "TRITON_METRICS_PORT"):
        monkeypatch.delenv(name, raising=False)

    settings = TritonSettings()

    assert (settings.host, settings.http_port, settings.grpc_port, settings.metrics_port) == (
        "127.0.0.1",
        8001,
        8002,
        8003,
    )


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_HTTP_PORT", "9101")

    assert TritonSettings().http_port == 9101


def test_settings_refuse_exposing_triton_unless_asked() -> None:
    with pytest.raises(ValidationError, match="TRITON_ALLOW_NON_LOOPBACK"):
        TritonSettings(host="0.0.0.0")

    assert TritonSettings(host="0.0.0.0", allow_non_loopback=True).host == "0.0.0.0"


def test_settings_refuse_clashing_ports() -> None:
    with pytest.raises(ValidationError, match="must differ"):
        TritonSettings(http_port=9000, grpc_port=9000)


def test_environment_refuses_numpy_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triton_launcher.importlib.metadata, "version", lambda name: "2.1.0")

    with pytest.raises(TritonEnvironmentError, match="numpy<2"):
        check_environment()


def test_environment_refuses_a_static_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triton_launcher.sysconfig, "get_config_var", lambda name: 0)

    with pytest.raises(TritonEnvironmentError, match="--enable-shared"):
        check_environment()


def test_busy_port_is_reported_before_anything_starts(tmp_path: Path) -> None:
    settings = _settings()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", settings.grpc_port))
        holder.listen()
        server = TritonServer(tmp_path, settings, run_dir=tmp_path / "run")

        with pytest.raises(TritonStartError, match=f"grpc port {settings.grpc_port}.*TRITON_GRPC_PORT"):
            server.start()

    assert server.pid is None


def test_cli_rejects_bad_settings(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TRITON_HOST", "10.0.0.1")

    assert cli_main(["--model-repository", "."]) == 2
    assert "TRITON_ALLOW_NON_LOOPBACK" in capsys.readouterr().err


def _python_model(repository: Path, name: str, source: str, config: str | None = None) -> None:
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "1" / "model.py").write_text(source)
    (repository / name / "config.pbtxt").write_text(
        config
        if config is not None
        else f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n'
        'input { name: "x" data_type: TYPE_FP32 dims: [1] }\noutput { name: "y" data_type: TYPE_FP32 dims: [1] }\n'
    )


@pytest.mark.triton
def test_server_that_exits_reports_its_log(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    _python_model(repository, "broken", "", config='name: "broken"\nbackend: "python"\nmax_batch_size: -3\n')
    server = TritonServer(repository, _settings(), run_dir=tmp_path / "run", load_models=["broken"])

    with pytest.raises(TritonStartError, match=r"(?s)exited with code 1.*max_batch_size. must be non-negative"):
        server.start()

    assert not server.is_running()


@pytest.mark.triton
def test_start_gives_up_after_the_ready_timeout_and_leaves_nothing_running(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    _python_model(repository, "slow", SLOW_MODEL)
    settings = _settings(ready_timeout_s=3, stop_timeout_s=5, exit_timeout_secs=0)
    server = TritonServer(repository, settings, run_dir=tmp_path / "run", load_models=["slow"])

    with pytest.raises(TritonStartError, match="not ready after 3 s"):
        server.start()

    assert not server.is_running()
    assert not _group_alive(server)


@pytest.mark.triton
def test_context_manager_serves_then_stops(tmp_path: Path) -> None:
    import httpx

    (tmp_path / "repo").mkdir()
    with TritonServer(tmp_path / "repo", _settings(exit_timeout_secs=0), log_path=tmp_path / "triton.log") as server:
        assert httpx.get(f"{server.http_url}/v2/health/live").status_code == 200
        assert "nv_" in httpx.get(server.metrics_url).text
        group = server.pid

    assert not server.is_running()
    assert group is not None and not _pgid_alive(group)
    assert "Started HTTPService" in (tmp_path / "triton.log").read_text()


def _group_alive(server: TritonServer) -> bool:
    return server.pid is not None and _pgid_alive(server.pid)


def _pgid_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
