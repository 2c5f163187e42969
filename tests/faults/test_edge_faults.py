"""nginx in front of the real gateways and Triton: a reload and a dead replica cost no client request."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from serving.edge.launcher import write_config
from serving.edge.settings import EdgeSettings
from tests.stack_fixture import Load, Stack, descendants, failures, kill_group, summary, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.triton, pytest.mark.mlflow]


def nginx_master(stack: Stack) -> int:
    return int((stack.edge_dir / "nginx.pid").read_text())


def nginx_workers(stack: Stack) -> set[int]:
    master = nginx_master(stack)
    return {pid for pid in descendants(master) if pid != master}


def test_nginx_reload_under_load_fails_no_request(stack: Stack) -> None:
    env = stack.services["nginx"].env
    settings = EdgeSettings(port=int(env["EDGE_PORT"]), upstreams=env["EDGE_UPSTREAMS"].split(","))
    master, workers = nginx_master(stack), nginx_workers(stack)
    load = Load(stack.edge_url, workers=4).start()
    try:
        wait_until(lambda: len(load.snapshot()) >= 20, "traffic through nginx", 30)
        for _ in range(3):
            # What Edge.reload does: render, check with `nginx -t`, then SIGHUP the master.
            write_config(settings, stack.edge_dir)
            os.kill(master, signal.SIGHUP)
            time.sleep(1.0)
        time.sleep(1.0)
    finally:
        answers = load.stop()
    print(f"\nnginx reloaded 3 times under load: {summary(answers)}")
    assert nginx_master(stack) == master and not workers & nginx_workers(stack), "the workers were not replaced"
    assert len(answers) > 50
    assert failures(answers) == [], summary(answers)


def chat_requests(url: str) -> float:
    """Chat requests this replica answered (its own counter: a restarted replica starts from 0)."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith("gateway_requests_total{") and 'route="/v1/chat/completions"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_gateway_replica_killed_mid_traffic_costs_no_request(stack: Stack) -> None:
    victim = stack.pid("gateway-1")
    assert victim is not None
    load = Load(stack.edge_url, workers=4).start()
    try:
        wait_until(lambda: len(load.snapshot()) >= 20, "traffic through nginx", 30)
        killed = time.monotonic()
        kill_group(victim, signal.SIGKILL)  # mid-request: some requests are in flight on it
        wait_until(lambda: len(load.since(killed)) >= 50, "traffic after the kill", 60)
        stack.stop("gateway-1")  # clears its pid record
        stack.start("gateway-1")
        # nginx skips a failed replica for EDGE_FAIL_TIMEOUT_S (5 s), then sends it traffic again.
        wait_until(lambda: chat_requests(stack.gateway_urls[0]) >= 10, "the restarted replica to take traffic", 60)
        time.sleep(1.0)
    finally:
        answers = load.stop()
    after = load.since(killed)
    print(f"\ngateway-1 killed under load, then restarted: {summary(after)}")
    assert stack.pid("gateway-1") not in (None, victim)
    assert failures(answers) == [], summary(answers)
    assert len(after) > 100
