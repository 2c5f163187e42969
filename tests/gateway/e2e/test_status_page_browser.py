"""The status page in a real headless Chromium, read as an operator reads it: the fleet's figures from
the rollout controller's report (every replica summed), times in words, who holds the controller,
one state word for the rollout; and, folded away, this replica's own counters, equal to its /metrics."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry import controller_status
from serving.telemetry import parse_version_stats
from tests.browser import chromium
from tests.gateway.conftest import AUTH
from tests.gateway.e2e.conftest import Gateway, Mlflow, SetRollout
from tests.gateway.e2e.test_rollout_e2e import GOLDEN, ask

pytestmark = [pytest.mark.triton, pytest.mark.mlflow, pytest.mark.slow]

#: A report in the shape serving.rollout.controller publishes, plus a figure it does not report yet
#: (time to first token): the page must show that one too, labelled, without a change.
REPORT: dict[str, Any] = {
    "holder": "rollout-controller ctl-host:4242",
    "phase": "analysing v2 at 50%",
    "canary": 2,
    "weight": 50,
    "failed_checks": 0,
    "verdict": "healthy: no regression",
    "figures": {
        "canary_requests": 1234.0,
        "champion_requests": 5678.0,
        "canary_error_rate": 0.0125,
        "champion_error_rate": 0.002,
        "canary_p50_ms": 31.5,
        "champion_p50_ms": 30.0,
        "canary_p95_ms": 48.25,
        "champion_p95_ms": 41.0,
        "p50_ratio": 1.05,
        "p95_ratio": 1.177,
        "canary_ttft_p95_ms": 210.0,
        "champion_ttft_p95_ms": 190.0,
    },
    "unreachable_gateways": ["http://10.0.0.7:8010"],
    "failed_loads": {},
}
READABLE_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC")


def by_id(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, element_id).text)


def fleet_cell(driver: Any, metric: str, column: str) -> str:
    from selenium.webdriver.common.by import By

    selector = f"#fleet td[data-metric='{metric}'][data-column='{column}']"
    return str(driver.find_element(By.CSS_SELECTOR, selector).text)


def replica_cell(driver: Any, field: str, version: int) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, f"td[data-field='{field}'][data-version='{version}']").text)


def eventually(driver: Any, read: Callable[[], Any], want: Callable[[Any], bool], timeout_s: float = 30) -> Any:
    """``read()`` once ``want`` holds (the page polls every 2 s, the gateway re-reads the report every 5 s)."""
    deadline = time.monotonic() + timeout_s
    seen: Any = None
    while time.monotonic() < deadline:
        try:
            seen = read()
        except Exception:  # not rendered yet
            seen = None
        if seen is not None and want(seen):
            return seen
        time.sleep(0.3)
    return seen


def test_the_status_page_shows_the_fleet_and_one_state(
    gateway: Gateway, mlflow: Mlflow, set_rollout: SetRollout, tmp_path: Path
) -> None:
    set_rollout({"champion": 1, "canary": 2}, weight=20)
    with httpx.Client(base_url=gateway.url, timeout=60) as http:
        reason = "browser check: weight to 50"
        assert http.post("/admin/weight", json={"weight": 50, "reason": reason}, headers=AUTH).status_code == 200
        for i in range(12):
            http.post("/v1/chat/completions", json=ask(GOLDEN[i % 4]), headers={"X-Session-Id": f"page-{i}"})
        http.post("/admin/faults", json={"version": 2, "error_percent": 100}, headers=AUTH)
        for i in range(12):  # the same sessions: those on the canary fail there (pinned ones would not count)
            http.post("/v1/chat/completions", json=ask(GOLDEN[i % 4]), headers={"X-Session-Id": f"page-{i}"})
        http.delete("/admin/faults", headers=AUTH)
        own = parse_version_stats(http.get("/metrics").text)
    assert own[2].errors >= 1
    controller_status.publish(mlflow.store(), REPORT | {"at": time.time()})

    with chromium(tmp_path / "profile") as browser:
        browser.get(gateway.url + "/")
        shown = eventually(browser, lambda: fleet_cell(browser, "requests", "canary"), lambda t: t == "1,234")
        screenshot = tmp_path / "gateway-status.png"
        browser.save_screenshot(str(screenshot))
        print(f"status page screenshot: {screenshot}")
        assert shown == "1,234", "the fleet's figures (the controller's report) never appeared"

        # The fleet's figures, each labelled, the one the page has never heard of included.
        assert fleet_cell(browser, "requests", "champion") == "5,678"
        assert fleet_cell(browser, "error_rate", "canary") == "1.25%"
        assert fleet_cell(browser, "p95_ms", "canary ÷ champion") == "1.18×"
        assert fleet_cell(browser, "ttft_p95_ms", "canary") == "210.0 ms"
        fleet = by_id(browser, "fleet")
        headings = ("Champion", "Canary ÷ champion", "Requests", "Error rate", "Latency p95", "Time to first token p95")
        for words in headings:
            assert words in fleet, fleet
        assert "Not counted (unreachable): http://10.0.0.7:8010" in by_id(browser, "fleet-unreachable")

        # One state word; times and the holder in words, no epoch and no host:pid.
        assert by_id(browser, "rollout-state") == "analysing"
        assert by_id(browser, "rollout-detail") == "analysing v2 at 50%"
        page = by_id(browser, "fleet-summary") + by_id(browser, "controller-at") + by_id(browser, "generated-at")
        assert READABLE_TIME.match(by_id(browser, "controller-at")), page
        assert READABLE_TIME.match(by_id(browser, "generated-at")), page
        assert not re.search(r"\b1\d{9}(\.\d+)?\b", page), page
        assert by_id(browser, "controller-holder") == "rollout-controller on ctl-host (process 4242)"
        assert (by_id(browser, "champion"), by_id(browser, "canary"), by_id(browser, "weight")) == ("v1", "v2", "50%")
        assert by_id(browser, "registry-state") == "reachable" and by_id(browser, "triton-state") == "reachable"
        assert reason in by_id(browser, "history")
        assert "running" not in browser.find_element("tag name", "body").text

        # This replica's counters are folded away, labelled as one replica's, and equal its /metrics.
        from selenium.webdriver.common.by import By

        assert replica_cell(browser, "total-requests", 1) == ""  # folded: not what a person reads first
        browser.find_element(By.CSS_SELECTOR, "#replica summary").click()
        for v in (1, 2):
            expected = (str(round(own[v].requests)), str(round(own[v].errors)))
            counted = eventually(
                browser,
                lambda v=v: (replica_cell(browser, "total-requests", v), replica_cell(browser, "total-errors", v)),
                lambda seen, expected=expected: seen == expected,
            )
            assert counted == expected, f"replica v{v}: page {counted} vs /metrics {expected}"
        assert "one gateway of the fleet" in by_id(browser, "replica")

        # No canary: the registry's word, whatever the controller said last.
        set_rollout({"champion": 1}, weight=0)
        controller_status.publish(mlflow.store(), REPORT | {"phase": "idle", "canary": None, "at": time.time()})
        state = eventually(browser, lambda: by_id(browser, "rollout-state"), lambda t: t == "idle")
        assert state == "idle"
        assert "running" not in browser.find_element("tag name", "body").text
    assert screenshot.stat().st_size > 10_000
