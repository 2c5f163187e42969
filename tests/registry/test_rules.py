"""Fast unit layer: rollout rules, checksums, settings, the stage's input checks. No MLflow server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.manifest import manifest_digest, model_digests
from core.rollout_policy import RolloutPolicy
from core.stage import StageError
from pipelines import register as stage
from registry import __main__ as cli
from registry import manifest, plans, server
from registry.errors import (
    InvalidTransitionError,
    NotValidatedError,
    ServerError,
    TamperedArtifactError,
)
from registry.events import Actor, Event
from registry.settings import RegistrySettings
from registry.state import RolloutState
from tests.registry.conftest import write_project

STEPS = (5, 25, 50, 100)


def _state(weight: int = 0, paused: bool = False, **aliases: int) -> RolloutState:
    named = {alias.replace("_", "-"): version for alias, version in aliases.items()}
    return RolloutState(model="m", aliases=named, canary_weight=weight, generation=3, paused=paused)


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
        (_state(), lambda s: plans.promote_to_champion(s, None), "has no canary"),
        (_state(candidate=2), lambda s: plans.promote_to_champion(s, 3), "v3 is not the candidate"),
        (_state(champion=1, candidate=2), lambda s: plans.promote_to_champion(s, None), "has no canary"),
        (
            _state(100, champion=1, canary=2),
            lambda s: plans.step(s, STEPS, None),
            r"last step .* promote --to champion",
        ),
        (_state(60, champion=1, canary=2), lambda s: plans.step(s, (5, 50), None), "last step"),
        (_state(5, True, champion=1, canary=2), lambda s: plans.step(s, STEPS, None), "paused .* resume"),
        (_state(5, champion=1, canary=2), lambda s: plans.step(s, (50, 25), None), "strictly increasing"),
        (_state(champion=1), lambda s: plans.step(s, STEPS, None), "has no canary"),
        (_state(champion=2, previous_champion=1), lambda s: plans.abort(s, None, "t"), "no canary to abort"),
        (_state(paused=True), plans.pause, "already paused"),
        (_state(), plans.resume, "not paused"),
    ],
)
def test_refusals_say_why(state: RolloutState, call: object, message: str) -> None:
    with pytest.raises(InvalidTransitionError, match=message):
        call(state)  # type: ignore[operator]


def test_first_release_promotes_the_candidate_straight_to_champion() -> None:
    plan = plans.promote_to_champion(_state(candidate=1), version=1)
    assert plan.action == "promote-champion" and plan.version == 1
    assert plan.ops == (plans.SetWeight(0), plans.SetAlias("champion", 1), plans.DropAlias("candidate"))
    assert "straight to champion" in plan.summary


@pytest.mark.parametrize(("weight", "expected"), [(0, 5), (5, 25), (10, 25), (25, 50), (50, 100)])
def test_step_moves_to_the_next_step_above_the_current_weight(weight: int, expected: int) -> None:
    plan = plans.step(_state(weight, champion=1, canary=2), STEPS, 2)
    assert plan.ops == (plans.SetWeight(expected),) and plan.action == "step"
    assert plan.summary == f"canary v2 stepped {weight}% -> {expected}%"


def test_pause_and_resume_flip_the_flag_and_name_the_canary() -> None:
    paused = plans.pause(_state(25, champion=1, canary=2))
    assert paused.ops == (plans.SetPaused(True),) and paused.version == 2 and "v2 at 25%" in paused.summary
    assert plans.resume(_state(25, True, champion=1, canary=2)).ops == (plans.SetPaused(False),)
    assert "paused" in _state(paused=True).describe()


def test_abort_rolls_back_only_the_canary() -> None:
    plan = plans.abort(_state(20, champion=1, canary=2), 2, "stamp")
    assert plan.ops == (
        plans.SetWeight(0),
        plans.DropAlias("canary"),
        plans.TagVersion(2, plans.ROLLED_BACK_TAG, "stamp"),
    )


def test_rollback_prefers_the_canary_then_the_previous_champion() -> None:
    canary = plans.rollback(_state(20, champion=1, canary=2, previous_champion=0), None, "t")
    assert canary.action == "rollback-canary" and plans.DropAlias("canary") in canary.ops
    champion = plans.rollback(_state(champion=2, previous_champion=1), 2, "t")
    assert champion.ops[:2] == (plans.SetAlias("champion", 1), plans.DropAlias("previous-champion"))


def test_manifest_verification_names_each_bad_file(tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.bin").write_bytes(b"a")
    (tmp_path / "b.txt").write_text("b")
    digests = manifest.all_files(tmp_path)
    data = manifest.to_bytes(digests)
    assert manifest.to_bytes(dict(reversed(digests.items()))) == data  # canonical bytes
    assert manifest.parse(data, manifest.sha256_bytes(data), manifest_digest(digests), "x") == digests
    manifest.verify(tmp_path, digests, "src")
    (tmp_path / "v" / "a.bin").write_bytes(b"A")
    (tmp_path / "b.txt").unlink()
    (tmp_path / "v" / "__pycache__").mkdir()
    (tmp_path / "v" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"code")
    with pytest.raises(TamperedArtifactError) as caught:
        manifest.verify(tmp_path, digests, "src")
    message = str(caught.value)
    assert "src/v/a.bin: modified" in message and "src/b.txt: missing" in message
    assert "src/v/__pycache__/a.cpython-311.pyc: unexpected" in message, "bytecode is never trusted"


def test_manifest_is_refused_unless_it_matches_the_version_tags() -> None:
    digests = {"config.pbtxt": "a" * 64, "version/model.py": "b" * 64}
    data = manifest.to_bytes(digests)
    with pytest.raises(TamperedArtifactError, match=r"differs from the manifest\.sha256"):
        manifest.parse(data + b" ", manifest.sha256_bytes(data), manifest_digest(digests), "m v1")
    with pytest.raises(TamperedArtifactError, match="other files than validation served"):
        manifest.parse(data, manifest.sha256_bytes(data), "0" * 64, "m v1")
    escape = manifest.to_bytes({"../x": "c" * 64})
    with pytest.raises(TamperedArtifactError, match="outside the artifact"):
        manifest.parse(escape, manifest.sha256_bytes(escape), manifest_digest({"../x": "c" * 64}), "m v1")


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
    with pytest.raises(ValueError, match="lock_ttl_s"):
        RegistrySettings(lock_ttl_s=0)


def test_rollout_steps_are_settings_with_errors_that_name_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    assert RolloutPolicy().steps == [5, 25, 50, 100]
    monkeypatch.setenv("ROLLOUT_STEPS", "10,50,100")
    assert RolloutPolicy().steps == [10, 50, 100]
    for bad, words in (("50,25", "strictly increasing"), ("5,120", "from 1 to 100"), ("", "at least one")):
        monkeypatch.setenv("ROLLOUT_STEPS", bad)
        with pytest.raises(ValidationError, match=words):
            RolloutPolicy()


def test_event_details_keep_their_types_and_refuse_odd_keys() -> None:
    from datetime import UTC, datetime

    event = Event(
        action="step", version=2, actor="controller", at=datetime(2026, 1, 1, tzinfo=UTC), before="b", after="a",
        generation=4, summary="s", reason="canary healthy", details={"p_value": 0.01234, "requests": 812, "why": "ok"},
    )  # fmt: skip
    assert event.figures() == "p_value=0.01234 requests=812 why=ok"
    assert event.tags()["rollout.reason"] == "canary healthy"
    assert json.loads(event.tags()["rollout.details"]) == {"p_value": 0.01234, "requests": 812, "why": "ok"}
    with pytest.raises(ValidationError, match="detail key"):
        Event.model_validate({**event.model_dump(), "details": {"p value!": 1}})


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
    with pytest.raises(
        NotValidatedError, match=r"32\.0 points lower than the base model\), base 92\.0%; config errors: 2"
    ):
        stage.build_candidate(inputs)
    good = write_project(tmp_path / "q")
    original_validate = good.validate_metrics.read_text()
    (good.triton_repo / "qwen3-vl-v1" / "1" / "model.py").write_text("# edited after validation\n")
    with pytest.raises(NotValidatedError) as changed:
        stage.build_candidate(good)
    served = json.loads(original_validate)["served_digest"]
    actual = manifest_digest(model_digests(good.triton_repo / "qwen3-vl-v1", "1"))
    assert served in str(changed.value) and actual in str(changed.value) and "dvc repro" in str(changed.value)
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
