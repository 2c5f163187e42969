"""A bad canary on the real stack: it hangs, it fails, its artifact is corrupted, its config is broken.

Each time the clients (closed-loop, through nginx) see only 200s answered by a version that works,
the controller takes the canary out (the issue's target: fault onset to canary weight 0 within
10 s), and the champion is never touched.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry import materialize, rollout
from registry.errors import TamperedArtifactError
from registry.events import Event
from registry.state import get_version
from tests.stack_fixture import ACTOR, Load, Stack, failures, summary, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.triton, pytest.mark.mlflow]

#: The issue's rollout target, fault onset to canary weight 0.
ROLLBACK_TARGET_S = 10.0
UPSTREAM_TIMEOUT_S = 2.0  # GATEWAY_UPSTREAM_TIMEOUT_S of the stack


def rollback_event(stack: Stack, version: int) -> Event | None:
    return next((e for e in stack.history(10) if e.action == "rollback-canary" and e.version == version), None)


def start_canary(stack: Stack) -> tuple[int, int]:
    """A fresh build as canary; returns (champion, canary) once the gateways route 50% to it."""
    champion = stack.state().version_of("champion")
    assert champion is not None
    canary = stack.register()
    rollout.promote_to_canary(stack.store(), ACTOR, canary)  # at 0%: the controller loads it, then steps
    stack.wait_serving(champion, canary, weight=50)
    return champion, canary


FAULTS = {
    # Far beyond the gateway's upstream timeout: each canary attempt is cut at 2 s.
    "hang": {"delay_ms": 60_000},
    "5xx": {"error_percent": 100},
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_failing_canary_costs_no_client_request_and_is_rolled_back(stack: Stack, fault: str) -> None:
    champion, canary = start_canary(stack)
    # Enough clients that a hung canary, each of its attempts held for the timeout, still fails often.
    load = Load(stack.edge_url, workers=6).start()
    try:
        wait_until(lambda: sum(a.version == str(canary) for a in load.snapshot()) >= 15, "canary answers", 30)
        # Healthy so far: the floors have judged a window with enough canary traffic and kept it.
        assert stack.state().canary_weight == 50, f"rolled back before any fault: {rollback_event(stack, canary)}"
        onset = time.monotonic()
        stack.set_faults({"version": canary, **FAULTS[fault]})
        injected = time.monotonic()  # on every replica from here on
        rollback_s = wait_until(
            lambda: time.monotonic() - onset if stack.state().canary_weight == 0 else None,
            "the canary's weight to reach 0",
            60,
            poll_s=0.1,
        )
        routed_away_s = wait_until(
            lambda: time.monotonic() - onset if all(s["canary_weight"] == 0 for s in stack.gateway_states()) else None,
            "every gateway to route nothing to the canary",
            30,
            poll_s=0.1,
        )
        time.sleep(UPSTREAM_TIMEOUT_S + 1)  # requests already waiting on the canary finish on the champion
    finally:
        answers = load.stop()
    after = [a for a in answers if a.started >= injected]
    print(
        f"\n{fault}: canary v{canary} weight 0 after {rollback_s:.2f} s (gateways {routed_away_s:.2f} s); "
        f"{summary(after)}"
    )
    assert failures(answers) == [], summary(answers)
    # A hung canary's attempts fail only at the upstream timeout, the same for canary and champion (a
    # shorter cut for the canary would hide its slow answers from the verdict): its evidence starts then.
    target = ROLLBACK_TARGET_S + (UPSTREAM_TIMEOUT_S if fault == "hang" else 0)
    assert rollback_s <= target, f"rolled back after {rollback_s:.1f} s"
    # The fault did reach clients' requests, and the champion answered each of them.
    hit = [a for a in after if a.seconds >= UPSTREAM_TIMEOUT_S * 0.9] if fault == "hang" else after
    assert hit and {a.version for a in hit} == {str(champion)}, summary(hit)
    assert sum(a.version == str(canary) for a in after) == 0
    event = rollback_event(stack, canary)
    assert event is not None and event.actor.startswith("rollout-controller")
    assert "canary error rate" in (event.reason or "") and event.details["canary_error_rate"] > 0.05


def artifact_dir(stack: Stack, version: int) -> Path:
    """Where the version's ``model/`` artifact lies in the scratch store's artifact folder."""
    source = get_version(stack.store(), version).source  # mlflow-artifacts:/<experiment>/<run>/artifacts/model
    return stack.store_dir / "artifacts" / source.removeprefix("mlflow-artifacts:/")


def triton_models(stack: Stack) -> dict[str, Any]:
    response = httpx.post(f"http://127.0.0.1:{stack.ports.triton_http}/v2/repository/index", json={}, timeout=10)
    return {entry["name"]: entry.get("state") for entry in response.json()}


def test_a_corrupted_artifact_is_refused_and_the_champion_keeps_serving(stack: Stack, tmp_path: Path) -> None:
    champion = stack.state().version_of("champion")
    version = stack.register()
    weights = artifact_dir(stack, version) / "version" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one byte, as bit rot or a tampered upload would
    weights.write_bytes(bytes(data))

    dest = tmp_path / "serve" / str(version)
    dest.mkdir(parents=True)
    (dest / "previous.txt").write_text("what was served before")
    with pytest.raises(TamperedArtifactError, match=r"version/model\.safetensors: modified \(sha256 differs\)"):
        materialize.materialize_version(stack.store(), version, dest)
    assert [p.name for p in dest.iterdir()] == ["previous.txt"]
    assert [p.name for p in dest.parent.iterdir()] == [str(version)]  # no half-written sibling left

    load = Load(stack.edge_url).start()
    try:
        rollout.promote_to_canary(stack.store(), ACTOR, version, weight=50)
        event = wait_until(lambda: rollback_event(stack, version), "the controller to refuse the canary", 60)
        stack.wait_serving(champion)
        time.sleep(1)
    finally:
        answers = load.stop()
    print(f"\ncorrupted v{version}: refused with {event.reason!r}; {summary(answers)}")
    assert "cannot be served" in (event.reason or "") and "sha256 differs" in (event.reason or "")
    assert failures(answers) == [] and {a.version for a in answers} == {str(champion)}, summary(answers)
    served = f"{stack.settings.model_name}-v{version}"
    assert served not in triton_models(stack)
    assert not (stack.run_dir / "triton-repo" / served).exists()


def break_config(model_dir: Path) -> None:
    """A hand edit Triton refuses at load: a preferred batch size above max_batch_size (8)."""
    config = model_dir / "config.pbtxt"
    text = config.read_text()
    assert "preferred_batch_size: 8" in text
    config.write_text(text.replace("preferred_batch_size: 8", "preferred_batch_size: 16"))


def test_a_registered_version_with_a_bad_config_is_refused_without_touching_the_champion(stack: Stack) -> None:
    champion = stack.state().version_of("champion")
    version = stack.register(edit=break_config)  # registered despite it (validate would have refused it)
    load = Load(stack.edge_url).start()
    try:
        rollout.promote_to_canary(stack.store(), ACTOR, version, weight=50)
        event = wait_until(lambda: rollback_event(stack, version), "the controller to refuse the canary", 90)
        stack.wait_serving(champion)
        time.sleep(1)
    finally:
        answers = load.stop()
    print(f"\nbad config v{version}: refused with {event.reason!r}; {summary(answers)}")
    # Triton's load API says only that the model failed to load (its log names the config rule).
    assert f"Triton refused to load {stack.settings.model_name}-v{version}" in (event.reason or "")
    assert failures(answers) == [] and {a.version for a in answers} == {str(champion)}, summary(answers)
    models = triton_models(stack)
    assert models[f"{stack.settings.model_name}-v{champion}"] == "READY"
    assert models.get(f"{stack.settings.model_name}-v{version}") != "READY"
    # Nor is it left in Triton's repository, where a restarted Triton (loading every model there) would
    # refuse to start over it.
    assert not (stack.run_dir / "triton-repo" / f"{stack.settings.model_name}-v{version}").exists()
