"""The status page in a real headless Chromium: its figures are the gateway's own /metrics."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serving.telemetry import parse_version_stats
from tests.gateway.conftest import AUTH
from tests.gateway.e2e.conftest import Gateway, SetRollout
from tests.gateway.e2e.test_rollout_e2e import GOLDEN, ask

pytestmark = [pytest.mark.triton, pytest.mark.mlflow, pytest.mark.slow]

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# Without the networking flags Chromium stalls on a closed network (DESIGN.md).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1100",
)


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (make install)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never fetch a browser or driver
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def cell(driver: object, field: str, version: int) -> str:
    from selenium.webdriver.common.by import By

    selector = f"td[data-field='{field}'][data-version='{version}']"
    return str(driver.find_element(By.CSS_SELECTOR, selector).text)  # type: ignore[attr-defined]


def text(driver: object, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, element_id).text)  # type: ignore[attr-defined]


def test_the_status_page_shows_this_replicas_figures(
    browser: object, gateway: Gateway, set_rollout: SetRollout, tmp_path: Path
) -> None:
    set_rollout({"champion": 1, "canary": 2}, weight=20)
    with httpx.Client(base_url=gateway.url, timeout=60) as http:
        reason = "browser check: weight to 50"
        assert http.post("/admin/weight", json={"weight": 50, "reason": reason}, headers=AUTH).status_code == 200
        for i in range(12):
            http.post("/v1/chat/completions", json=ask(GOLDEN[i % 4]), headers={"X-Session-Id": f"page-{i}"})
        http.post("/admin/faults", json={"version": 2, "error_percent": 100}, headers=AUTH)
        for i in range(6):
            http.post("/v1/chat/completions", json=ask(GOLDEN[i % 4]), headers={"X-Model-Version": "2"})
        http.delete("/admin/faults", headers=AUTH)
        expected = parse_version_stats(http.get("/metrics").text)
    assert expected[2].errors >= 6

    browser.get(gateway.url + "/")  # type: ignore[attr-defined]
    deadline = time.monotonic() + 20
    shown: dict[int, tuple[str, str, str]] = {}
    while time.monotonic() < deadline:
        try:
            shown = {
                v: (
                    cell(browser, "total-requests", v),
                    cell(browser, "total-errors", v),
                    cell(browser, "window-requests", v),
                )
                for v in (1, 2)
            }
        except Exception:  # the first render has not happened yet
            shown = {}
        if shown and all(
            shown[v]
            == (str(round(expected[v].requests)), str(round(expected[v].errors)), str(round(expected[v].requests)))
            for v in (1, 2)
        ):
            break
        time.sleep(0.3)
    screenshot = tmp_path / "gateway-status.png"
    browser.save_screenshot(str(screenshot))  # type: ignore[attr-defined]
    print(f"status page screenshot: {screenshot}")
    for v in (1, 2):
        assert shown.get(v) == (
            str(round(expected[v].requests)),
            str(round(expected[v].errors)),
            str(round(expected[v].requests)),  # the window (GATEWAY_STATUS_WINDOW_S=3600) spans the whole run
        ), f"page {shown} vs /metrics {expected}"
    assert (text(browser, "champion"), text(browser, "canary"), text(browser, "weight")) == ("v1", "v2", "50%")
    assert text(browser, "registry-state") == "reachable"
    assert text(browser, "triton-state") == "reachable"
    assert cell(browser, "window-p50", 1) != "–" and cell(browser, "window-p95", 1) != "–"
    assert reason in text(browser, "history")
    assert screenshot.stat().st_size > 10_000
