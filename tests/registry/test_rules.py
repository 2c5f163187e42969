"""Fast unit layer: rollout rules, checksums, settings, the stage's input checks. No MLflow server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.stage import StageError
from pipelines import register as stage
from registry import __main__ as cli
from registry import manifest, plans, server
from registry.errors import InvalidTransitionError, NotValidatedError, ServerError, TamperedArtifactError
from registry.events import Actor
from registry.settings import RegistrySettings
from registry.state import RolloutState
from tests.registry.conftest import write_project


def _state(weight: int = 0, **aliases: int) -> RolloutState:
    named = {alias.replace("_", "-"): version for alias, version in aliases.items()}
    return RolloutState(model="m", aliases=named, canary_weight=weight, generation=3)


def test_promote_to_champion_shifts_traffic_back_before_moving_the_alias() -> None:
    plan = plans.promote_to_champion(_state(30, champion=1, canary=2), version=2)
    assert plan.ops == (
        plans.SetWeight(0),
        plans.SetAlias("previous-champion", 1),
        plans.SetAlias("champion", 2),
        plans.DropAlias("canary"),
    )


@pytest.mark.parametrize(
    ("state", "call", "message"),
    [
        (_state(champion=1), lambda s: plans.promote_to_canary(s, None, 0), "no candidate"),
        (_state(candidate=3, canary=2), lambda s: plans.promote_to_canary(s, None, 0), "already the canary"),
        (_state(candidate=3), lambda s: plans.promote_to_canary(s, 4, 0), "v4 is not the candidate"),
        (_state(canary=2), lambda s: plans.set_weight(s, 101, None), "out of range"),
        (_state(champion=1), lambda s: plans.set_weight(s, 10, None), "has no canary"),
        (_state(champion=1), lambda s: plans.promote_to_champion(s, None), "has no canary"),
        (_state(canary=2), lambda s: plans.rollback(s, 5, "t"), "v5 is not the canary"),
        (_state(champion=1), lambda s: plans.rollback(s, None, "t"), "nothing to roll back"),
    ],
)
def test_refusals_say_why(state: RolloutState, call: object, message: str) -> None:
    with pytest.raises(InvalidTransitionError, match=message):
        call(state)  # type: ignore[operator]


def test_rollback_prefers_the_canary_then_the_previous_champion() -> None:
    canary = plans.rollback(_state(20, champion=1, canary=2, previous_champion=0), None, "t")
    assert canary.action == "rollback-canary" and plans.DropAlias("canary") in canary.ops
    champion = plans.rollback(_state(champion=2, previous_champion=1), 2, "t")
    assert champion.ops[:2] == (plans.SetAlias("champion", 1), plans.DropAlias("previous-champion"))


def test_manifest_verification_names_each_bad_file(tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.bin").write_bytes(b"a")
    (tmp_path / "b.txt").write_text("b")
    digests = manifest.tree_digests(tmp_path)
    tags = manifest.to_tags(digests)
    assert manifest.from_tags(tags, "x") == digests
    manifest.verify(tmp_path, digests, "src")
    (tmp_path / "v" / "a.bin").write_bytes(b"A")
    (tmp_path / "b.txt").unlink()
    (tmp_path / "c.py").write_text("")
    with pytest.raises(TamperedArtifactError) as caught:
        manifest.verify(tmp_path, digests, "src")
    assert all(s in str(caught.value) for s in ("src/v/a.bin: modified", "src/b.txt: missing", "src/c.py: unexpected"))
    with pytest.raises(Exception, match="cannot be an MLflow tag key"):
        manifest.to_tags({"we!rd.bin": "0" * 64})


def test_settings_default_to_the_project_sqlite_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("MLFLOW_TRACKING_URI", "REGISTRY_BACKEND_STORE_URI", "REGISTRY_ARTIFACTS_DESTINATION"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "params.yaml").write_text("registry:\n  model_name: m1\n  experiment: e1\n")
    local = RegistrySettings(project_dir=tmp_path)
    # The names come from params.yaml's `registry` group; the store is hidden, so it cannot shadow a package.
    assert (local.model_name, local.experiment) == ("m1", "e1")
    assert local.effective_tracking_uri == f"sqlite:///{tmp_path}/.mlflow/mlflow.db"
    assert local.artifacts_dir == tmp_path / ".mlflow" / "artifacts" and not local.is_remote
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert RegistrySettings().is_remote
    command = server.server_command(local)
    assert command[command.index("--workers") + 1] == "1"
    assert command[command.index("--backend-store-uri") + 1] == local.store_uri
    assert command[command.index("--artifacts-destination") + 1] == str(local.artifacts_dir)
    assert "--serve-artifacts" in command
    assert server.server_env({"MLFLOW_TRACKING_URI": "x"}) == {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    assert RegistrySettings(tracking_uri=None).tracking_uri is None  # an explicit value beats the environment
    with pytest.raises(ValueError, match="is not a plain name"):
        RegistrySettings(model_name="a/b")
    with pytest.raises(ValueError, match="no authentication"):
        RegistrySettings(host="0.0.0.0")
    assert RegistrySettings(host="0.0.0.0", allow_public_bind=True).server_url == "http://0.0.0.0:5000"


def test_wait_healthy_gives_up_after_bounded_retries() -> None:
    with pytest.raises(ServerError, match="not healthy after 2 attempts"):
        server.wait_healthy("http://127.0.0.1:9", attempts=2, interval_s=0.01)
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    dead.wait()
    with pytest.raises(ServerError, match="exited with code 3"):
        server.wait_healthy("http://127.0.0.1:9", attempts=5, interval_s=0.01, process=dead)


def test_actor_from_cli_user_or_github_run() -> None:
    assert Actor.from_env({"USER": "alice"}).name == "alice"
    bot = Actor.from_env({"USER": "runner", "GITHUB_ACTOR": "bob", "GITHUB_RUN_ID": "9", "GITHUB_REPOSITORY": "o/r"})
    assert bot.name == "bob (GitHub Actions run 9)"
    assert bot.run_url == "https://github.com/o/r/actions/runs/9"


def test_stage_inputs_are_checked_before_mlflow_is_touched(tmp_path: Path) -> None:
    inputs = write_project(tmp_path / "p", passed=False, accuracy=0.6)
    with pytest.raises(NotValidatedError, match=r"drop 0\.3200\); config errors: 2"):
        stage.build_candidate(inputs)
    good = write_project(tmp_path / "q")
    good.package_metrics.write_text(
        json.dumps({"model": "qwen3-vl", "triton_model": "qwen3-vl-v7", "version": 7, "bytes": 1})
    )
    good.validate_metrics.write_text(
        json.dumps({**json.loads(good.validate_metrics.read_text()), "model": "qwen3-vl-v7", "version": 7})
    )
    with pytest.raises(StageError, match=r"qwen3-vl-v7/config.pbtxt: not found"):
        stage.build_candidate(good)
    good.validate_metrics.write_text("{not json")
    with pytest.raises(StageError, match=r"validate\.json: not valid JSON"):
        stage.build_candidate(good)
    good.validate_metrics.write_text(json.dumps({"accuracy": 0.9}))
    with pytest.raises(StageError, match="passed: Field required"):
        stage.build_candidate(good)


def test_metrics_are_flattened_into_numbers_and_params() -> None:
    numbers, _ = stage.split_metrics("validate", {"accuracy": 0.9, "per_category": {"color": 1}, "passed": True})
    assert numbers == {"validate.accuracy": 0.9, "validate.per_category.color": 1.0, "validate.passed": 1.0}
    _, text = stage.split_metrics("package", {"model": "qwen3-vl", "files": ["a", "b"]})
    assert text == {"metrics.package.model": "qwen3-vl", "metrics.package.files": '["a", "b"]'}


def test_cli_says_what_to_check_when_mlflow_is_down(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    assert cli.main(["status"]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("registry: error: MLflow at http://127.0.0.1:9 failed") and "make mlflow" in err
