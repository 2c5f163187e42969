"""The registry under stress on the real stack: two promotions race, and MLflow goes away mid-rollout."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.conftest import ROOT
from tests.faults.test_canary_faults import start_canary
from tests.stack_fixture import EXPERIMENT, MODEL, Load, Stack, failures, summary, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.triton, pytest.mark.mlflow]

#: The CLI, imported and connected, waiting for a line on stdin before it acts: the race starts when
#: both sides are ready, not when a Python process happens to finish importing MLflow.
_CLI_AT_THE_LINE = """
import sys
from registry.__main__ import main
print("ready", flush=True)
sys.stdin.readline()
sys.exit(main(sys.argv[1:]))
"""


def cli_env(stack: Stack) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "MLFLOW_", "GITHUB_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        MLFLOW_TRACKING_URI=str(stack.settings.tracking_uri),
        REGISTRY_MODEL_NAME=MODEL,
        REGISTRY_EXPERIMENT=EXPERIMENT,
        REGISTRY_PROJECT_DIR=str(stack.project),
        MLFLOW_DISABLE_TELEMETRY="true",
        USER="cli-user",
    )
    return env


def test_two_promotions_race_and_exactly_one_applies(stack: Stack) -> None:
    candidate = stack.register()
    before = stack.state().generation
    argv = ["promote", "--to", "canary", "--version", str(candidate), "--reason", "from the CLI"]
    cli = subprocess.Popen(
        [sys.executable, "-c", _CLI_AT_THE_LINE, *argv],
        cwd=ROOT,
        env=cli_env(stack),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert cli.stdout is not None and cli.stdin is not None
    assert cli.stdout.readline().strip() == "ready"
    go = threading.Event()
    api: list[httpx.Response] = []

    def admin() -> None:
        go.wait()
        api.append(stack.admin("POST", "/admin/promote", json={"to": "canary", "version": candidate}))

    racer = threading.Thread(target=admin)
    racer.start()
    cli.stdin.write("go\n")
    cli.stdin.flush()
    go.set()
    out, err = cli.communicate(timeout=120)
    racer.join(timeout=120)
    (response,) = api

    applied = [e for e in stack.history(20) if e.generation > before and e.action == "promote-canary"]
    print(f"\nCLI exit {cli.returncode}: {(out + err).strip()[:300]}")
    print(f"admin API {response.status_code}: {response.text[:300]}")
    assert len(applied) == 1, [e.summary for e in applied]
    assert (cli.returncode == 0) != (response.status_code == 200), "exactly one of the two must apply"
    assert stack.state().version_of("canary") == candidate
    if cli.returncode == 0:  # the admin API lost: a 409 that says why
        assert response.status_code == 409 and response.json()["error"]["code"] == "conflict"
        assert applied[0].actor == "cli-user"
        message = response.json()["error"]["message"]
    else:  # the CLI lost: exit 1 (no longer a candidate) or 3 (lock taken, state moved), and why
        assert cli.returncode in (1, 3) and err.startswith(("registry: conflict:", "registry: error:"))
        assert applied[0].actor == "stack-tests (gateway admin API)"
        message = err
    assert f"v{candidate}" in message or "no candidate" in message or "another action" in message, message


def _cli_answer(stack: Stack, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "registry", *argv],
        cwd=ROOT,
        env=cli_env(stack),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


OUTAGE_S = 30.0


def test_mlflow_down_for_30_s_mid_rollout_holds_the_split_and_the_rollout_resumes(stack: Stack) -> None:
    champion, canary = start_canary(stack)
    controller = stack.pid("controller")
    mark = stack.log("controller").stat().st_size
    load = Load(stack.edge_url).start()
    try:
        wait_until(lambda: sum(a.version == str(canary) for a in load.snapshot()) >= 3, "canary answers", 30)
        generation = stack.state().generation
        stack.stop("mlflow")
        down = time.monotonic()
        try:
            wait_until(
                lambda: all(
                    not httpx.get(f"{url}/readyz").json()["registry"]["reachable"] for url in stack.gateway_urls
                ),
                "the gateways to notice MLflow is gone",
                20,
            )
            cli = _cli_answer(stack, "set-weight", "100", "--version", str(canary))
            api = stack.admin("POST", "/admin/weight", json={"weight": 100, "version": canary})
            ready = httpx.get(f"{stack.gateway_urls[0]}/readyz").json()
            during = stack.gateway_states()
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down)))
        finally:
            stack.start("mlflow")
        up = time.monotonic()
        resumed = wait_until(
            lambda: next((e for e in stack.history(10) if e.generation > generation), None),
            "the controller to move the rollout on",
            60,
        )
        resumed_s = time.monotonic() - up
    finally:
        answers = load.stop()
    outage = [a for a in answers if down <= a.started < up]
    print(
        f"\nMLflow down {up - down:.1f} s: {summary(outage)}\nCLI exit {cli.returncode}: {cli.stderr.strip()[:400]}"
        f"\nadmin API {api.status_code}: {api.text[:300]}\nresumed {resumed_s:.1f} s after MLflow was back: "
        f"{resumed.summary} ({resumed.actor})"
    )
    assert up - down >= OUTAGE_S
    assert failures(answers) == [], summary(answers)
    # The split held: both versions kept answering through the outage, at the weight it had.
    assert {a.version for a in outage} == {str(champion), str(canary)}, summary(outage)
    assert all(s["canary_weight"] == 50 and s["aliases"]["canary"] == canary for s in during), during
    assert ready["registry"]["note"] == "MLflow is unreachable: serving the last known split"
    # Actions fail with a message a person can act on.
    assert cli.returncode == 1, cli.stderr
    assert f"MLflow at {stack.settings.tracking_uri} failed" in cli.stderr and "Is the server up" in cli.stderr
    assert (api.status_code, api.headers.get("retry-after")) == (503, "1"), api.text
    assert api.json()["error"]["code"] == "registry_unavailable"
    assert "MLflow did not answer" in api.json()["error"]["message"]
    # The controller held (same process, nothing moved, said so) and then carried on from the registry.
    held = stack.log("controller").read_bytes()[mark:].decode(errors="replace")
    assert stack.pid("controller") == controller
    assert "holding the current split" in held, held[-2000:]
    assert resumed.actor.startswith("rollout-controller") and resumed.action in ("step", "promote-champion")
    assert resumed.version == canary and "rollback" not in resumed.action
