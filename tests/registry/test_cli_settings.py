"""Bad registry settings are refused with the setting's name, not a traceback."""

from __future__ import annotations

import pytest

from registry.__main__ import main


def test_bad_model_name_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", "a/b", "status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("registry: error: bad settings") and "model_name" in err and "Traceback" not in err


def test_bad_port_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("REGISTRY_PORT", "x")
    assert main(["status"]) == 1
    assert "port: Input should be a valid integer" in capsys.readouterr().err
