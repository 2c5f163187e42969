"""Settings refuse unsafe values with a message that says what to set."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.gateway.settings import GatewaySettings
from tests.conftest import ROOT

TOKEN = "x" * 32


def test_defaults_are_the_seeds_port_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_HTTP_PORT", raising=False)
    settings = GatewaySettings(admin_token=TOKEN)
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.registry_poll_s == 1.0
    assert settings.image_url_hosts == []
    assert settings.shadow_percent == 0.0
    # Triton's address comes from the launcher's own settings, not a second default.
    assert settings.triton_url == "http://127.0.0.1:8001"


def test_triton_address_follows_the_triton_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_HTTP_PORT", "9101")
    assert GatewaySettings(admin_token=TOKEN).triton_url == "http://127.0.0.1:9101"


def test_environment_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("GATEWAY_PORT", "8010")
    monkeypatch.setenv("GATEWAY_IMAGE_URL_HOSTS", '["Images.Example.com"]')
    settings = GatewaySettings()
    assert settings.port == 8010
    assert settings.image_url_hosts == ["images.example.com"]


@pytest.mark.parametrize("token", [None, "", "short"])
def test_an_admin_token_is_required_outside_dev(token: str | None) -> None:
    with pytest.raises(ValidationError, match="GATEWAY_ADMIN_TOKEN must be set"):
        GatewaySettings(admin_token=token)


def test_dev_mode_runs_without_a_token_on_loopback_only() -> None:
    assert GatewaySettings(dev=True).admin_token_bytes is None
    with pytest.raises(ValidationError, match="loopback only"):
        GatewaySettings(dev=True, host="0.0.0.0", allow_non_loopback=True)


def test_non_loopback_needs_an_explicit_yes() -> None:
    with pytest.raises(ValidationError, match="GATEWAY_ALLOW_NON_LOOPBACK"):
        GatewaySettings(admin_token=TOKEN, host="0.0.0.0")
    assert GatewaySettings(admin_token=TOKEN, host="0.0.0.0", allow_non_loopback=True).host == "0.0.0.0"


def test_the_token_never_shows_in_reprs_or_dumps() -> None:
    settings = GatewaySettings(admin_token=TOKEN)
    assert TOKEN not in repr(settings)
    assert TOKEN not in str(settings.model_dump())
    assert settings.admin_token_bytes == TOKEN.encode()


@pytest.mark.parametrize("hosts", [["https://a.example"], ["a.example:443"], ["a.example/x"], [""]])
def test_image_hosts_are_bare_names(hosts: list[str]) -> None:
    with pytest.raises(ValidationError, match="bare host names"):
        GatewaySettings(admin_token=TOKEN, image_url_hosts=hosts)


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(ValidationError, match="extra"):
        GatewaySettings(admin_token=TOKEN, admin_tokn="typo")  # type: ignore[call-arg]


@pytest.mark.slow  # a fresh interpreter importing MLflow
def test_the_cli_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "serving.gateway"], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 2
    assert "GATEWAY_ADMIN_TOKEN must be set" in result.stderr
