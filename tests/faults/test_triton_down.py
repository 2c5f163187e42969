"""Triton killed mid-traffic: clients get a quick 503 with Retry-After (never a hang, never nginx's own
502), and once Triton runs again on the same ports and repository, the same gateways serve again."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.stack_fixture import MODEL, Answer, Load, Stack, command_line, descendants, kill_group, summary, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.triton, pytest.mark.mlflow]

#: A refusal while Triton is down must come at once, not after a client or upstream timeout.
QUICK_S = 5.0


def tritonserver(stack: Stack) -> int:
    launcher = stack.pid("triton")
    assert launcher is not None
    (server,) = [p for p in descendants(launcher) if command_line(p).split(" ", 1)[0].endswith("/tritonserver")]
    return server


def test_triton_killed_mid_traffic_then_back_without_restarting_the_gateways(stack: Stack) -> None:
    champion = stack.state().version_of("champion")
    gateways = [stack.pid("gateway-1"), stack.pid("gateway-2")]
    edge, direct = Load(stack.edge_url).start(), Load(stack.gateway_urls[0], workers=1).start()
    loads = {"nginx": edge, "gateway-1": direct}
    try:
        wait_until(lambda: len(edge.snapshot()) >= 10, "traffic", 30)
        kill_group(tritonserver(stack))  # SIGKILL to the server and its backend stubs, no goodbye
        killed = time.monotonic()
        wait_until(lambda: any(a.status == 503 for a in edge.since(killed)), "clients to see Triton gone", 20)
        time.sleep(3)  # a few seconds of outage under traffic
        stack.stop("triton")  # the launcher noticed and exited; this clears its record
        stack.start("triton")  # the same service: same ports, same model repository
        restarted = time.monotonic()
        back = wait_until(
            lambda: next((a.started for a in edge.since(restarted) if a.status == 200), None),
            "the gateways to serve again",
            120,
        )
        # Triton loads its repository (the controller's) at start; the controller takes it from there:
        # what Triton serves is exactly the champion again (anything else there is unloaded).
        served = f"{MODEL}-v{champion}"
        wait_until(lambda: ready_models(stack) == {served}, f"Triton to serve exactly {served}", 60)
        time.sleep(2)
    finally:
        results = {name: load.stop() for name, load in loads.items()}
    print(f"\nTriton down: clients served again {back - killed:.1f} s after the kill")
    for name, answers in results.items():
        outage = [a for a in answers if killed <= a.started < back]
        recovered = [a for a in answers if a.started >= back + 0.5]
        print(f"{name}: outage {summary(outage)}")
        assert outage, f"no request reached {name} during the outage"
        refused = [a for a in outage if a.status != 200]
        # Requests that got an answer from Triton before it died may still be 200; the rest are 503s.
        assert refused and all(_is_quick_503(a) for a in refused), summary(refused)
        assert recovered and {a.status for a in recovered} == {200}, summary(recovered)
        assert {a.version for a in recovered} == {str(champion)}
    assert [stack.pid("gateway-1"), stack.pid("gateway-2")] == gateways  # no gateway was restarted


def ready_models(stack: Stack) -> set[str]:
    try:
        index = httpx.post(f"http://127.0.0.1:{stack.ports.triton_http}/v2/repository/index", json={}, timeout=5)
    except httpx.HTTPError:
        return set()
    return {entry["name"] for entry in index.json() if entry.get("state") == "READY"}


def _is_quick_503(answer: Answer) -> bool:
    return answer.status == 503 and answer.retry_after == "1" and answer.seconds < QUICK_S
