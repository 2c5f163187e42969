"""``python -m registry`` as people and workflows call it: a real process against a real server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipelines import register as stage
from pipelines.register import RegisterInputs
from registry import __main__ as cli
from registry import events, lease, rollout
from registry.events import Actor
from registry.settings import RegistrySettings
from registry.store import Store
from tests.registry.conftest import ROOT, cli_env

pytestmark = pytest.mark.mlflow

ALIASES = ("champion", "canary", "candidate", "previous_champion")


def _cli(settings: RegistrySettings, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "registry", *args],
        cwd=ROOT,
        env={**cli_env(settings), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_status_json_reports_each_alias_with_lineage(
    settings: RegistrySettings, store: Store, make_project: Callable[..., RegisterInputs]
) -> None:
    actor = Actor(name="setup")
    first = make_project(weights=b"1", git=True)
    stage.register(first, settings, actor)
    rollout.promote_to_canary(store, actor)
    rollout.promote_to_champion(store, actor)
    stage.register(make_project(weights=b"2", accuracy=0.91), settings, actor)
    rollout.promote_to_canary(store, actor, weight=30)
    stage.register(make_project(weights=b"3", accuracy=0.88), settings, actor)

    done = _cli(settings, "status", "--json")

    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["registered_model"] == settings.model_name
    assert status["canary_weight"] == 30
    assert status["generation"] == 6
    versions = {alias: (status[alias] or {}).get("version") for alias in ALIASES}
    assert versions == {"champion": 1, "canary": 2, "candidate": 3, "previous_champion": None}
    champion = status["champion"]
    assert len(champion["commit"]) == 40 and champion["dirty"] is False
    assert len(champion["dvc_lock_sha256"]) == 64 and champion["run_id"]
    assert champion["accuracy"] == pytest.approx(0.9) and champion["size_bytes"] > 0
    assert champion["quantization"] == "bnb-nf4"
    assert status["canary"]["accuracy"] == pytest.approx(0.91)
    assert "v3 registered as candidate" in status["last_event"]


def _in_process(settings: RegistrySettings, monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """The same CLI without a new interpreter (importing MLflow costs seconds on two cores)."""
    for key, value in cli_env(settings).items():
        monkeypatch.setenv(key, value)
    return cli.main(list(args))


def test_workflow_style_promotion_through_the_cli(
    settings: RegistrySettings,
    make_project: Callable[..., RegisterInputs],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The commands promote.yml runs, with the actor taken from the GitHub environment."""
    stage.register(make_project(), settings, Actor(name="stage"))
    github = {"GITHUB_ACTOR": "octocat", "GITHUB_RUN_ID": "7", "GITHUB_REPOSITORY": "acme/p"}
    for args in (
        ("promote", "--to", "canary", "--version", "1"),
        ("set-weight", "40", "--version", "1"),
        ("promote", "--to", "champion", "--version", "1"),
    ):
        done = _cli(settings, *args, env=github)
        assert done.returncode == 0, (args, done.stderr)
    capsys.readouterr()
    assert _in_process(settings, monkeypatch, "rollback", "--version", "9") == cli.EXIT_ERROR
    assert capsys.readouterr().err.startswith("registry: error: nothing to roll back")
    with pytest.raises(SystemExit) as usage:
        _in_process(settings, monkeypatch, "set-weight", "140")
    assert usage.value.code == 2 and "not a percent from 0 to 100" in capsys.readouterr().err

    assert _in_process(settings, monkeypatch, "history", "--json") == 0
    history = json.loads(capsys.readouterr().out)
    assert [(e["action"], e["actor"]) for e in history[:3]] == [
        ("promote-champion", "octocat (GitHub Actions run 7)"),
        ("set-weight", "octocat (GitHub Actions run 7)"),
        ("promote-canary", "octocat (GitHub Actions run 7)"),
    ]
    assert _in_process(settings, monkeypatch, "materialize", "--out", str(tmp_path / "repo"), "--json") == 0
    materialized = json.loads(capsys.readouterr().out)
    assert materialized["champion"]["version"] == 1 and materialized["canary"] is None
    assert materialized["champion"]["served_model"] == f"{settings.model_name}-v1"
    assert (tmp_path / "repo" / "1" / "version" / "model.py").is_file()


@pytest.mark.parametrize("command", [("status",), ("materialize", "--out", "served"), ("promote", "--to", "champion")])
def test_a_model_never_registered_is_said_not_to_exist(
    settings: RegistrySettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    command: tuple[str, ...],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert _in_process(settings, monkeypatch, *command) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert f"registered model '{settings.model_name}' does not exist" in err and "dvc repro" in err
    assert "promote a candidate" not in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("set-weight", "abc"), "argument weight: 'abc' is not a whole number; give a percent from 0 to 100"),
        (("set-weight", "140"), "argument weight: 140 is not a percent from 0 to 100"),
        (("history", "--limit", "0"), "argument --limit: 0 is not allowed; give 1 or more"),
        (("history", "--limit", "-3"), "argument --limit: -3 is not allowed; give 1 or more"),
        (("step", "--version", "x"), "argument --version: 'x' is not an MLflow model version"),
    ],
)
def test_bad_arguments_are_refused_by_name_before_mlflow_is_asked(
    args: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as usage:
        cli.main(["--model", "never-contacted", *args])
    err = capsys.readouterr().err
    assert usage.value.code == 2 and message in err, err
    assert "server" not in err and "invalid _percent value" not in err


def test_a_rollout_driven_through_the_cli_records_reasons_and_figures(
    settings: RegistrySettings,
    store: Store,
    make_project: Callable[..., RegisterInputs],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    actor = Actor(name="setup")
    stage.register(make_project(weights=b"1"), settings, actor)
    assert _in_process(settings, monkeypatch, "promote", "--to", "champion", "--version", "1") == 0
    stage.register(make_project(weights=b"2"), settings, actor)
    assert _in_process(settings, monkeypatch, "promote", "--to", "canary") == 0
    rollout.set_weight(store, actor, 5, reason="canary healthy", details={"p_value": 0.4321, "requests": 812})
    capsys.readouterr()

    assert _in_process(settings, monkeypatch, "step", "--version", "2") == 0  # params.yaml: 5, 25, 50, 100
    assert "canary v2 stepped 5% -> 25%" in capsys.readouterr().out
    assert _in_process(settings, monkeypatch, "pause", "--reason", "on-call looking") == 0
    assert _in_process(settings, monkeypatch, "step") == cli.EXIT_ERROR
    assert "paused" in capsys.readouterr().err
    assert _in_process(settings, monkeypatch, "status", "--json") == 0
    assert json.loads(capsys.readouterr().out)["paused"] is True
    assert _in_process(settings, monkeypatch, "resume") == 0
    assert _in_process(settings, monkeypatch, "abort", "--reason", "error rate up") == 0
    assert _in_process(settings, monkeypatch, "abort") == cli.EXIT_ERROR
    assert "no canary to abort" in capsys.readouterr().err

    assert _in_process(settings, monkeypatch, "history", "--limit", "6") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6
    assert lines[0].endswith("canary v2 rolled back; weight 0% (by cli-tester): error rate up")
    assert lines[2].endswith("rollout paused with canary v2 at 25% (by cli-tester): on-call looking")
    assert lines[4].endswith("(by setup): canary healthy [p_value=0.4321 requests=812]")
    assert _in_process(settings, monkeypatch, "history", "--json", "--limit", "6") == 0
    recorded = json.loads(capsys.readouterr().out)
    assert [e["action"] for e in recorded] == [
        "rollback-canary",
        "resume",
        "pause",
        "step",
        "set-weight",
        "promote-canary",
    ]
    assert recorded[4]["reason"] == "canary healthy" and recorded[4]["details"] == {"p_value": 0.4321, "requests": 812}
    assert recorded[0]["details"] == {} and recorded[1]["reason"] is None


def test_unlock_clears_a_lock_left_by_a_dead_action(
    settings: RegistrySettings,
    store: Store,
    make_project: Callable[..., RegisterInputs],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stage.register(make_project(), settings, Actor(name="stage"))
    far = f"{time.time() + 3600:.3f}"
    store.client.create_registered_model(
        settings.lock_model_name, tags={lease.HOLDER_TAG: "`promote-canary` by ghost", lease.EXPIRES_TAG: far}
    )
    assert _in_process(settings, monkeypatch, "promote", "--to", "canary") == cli.EXIT_CONFLICT
    err = capsys.readouterr().err
    assert "by ghost" in err and "expires in" in err and "registry unlock" in err
    assert _in_process(settings, monkeypatch, "unlock") == 0
    assert _in_process(settings, monkeypatch, "promote", "--to", "canary") == 0
    assert [e.action for e in events.history(store)][:2] == ["promote-canary", "unlock"]
