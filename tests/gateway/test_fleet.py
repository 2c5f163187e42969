"""The controller's report as the status page shows it: fleet figures keyed by metric whatever the
controller reports, readable times and holder, and one state word for the rollout."""

from __future__ import annotations

from typing import Any

import pytest

from serving.gateway.fleet import (
    RATIO,
    STALE_AFTER_S,
    controller_view,
    figure_table,
    label,
    readable_holder,
    readable_time,
    rollout_state,
)

AT = 1_796_418_725.0  # 2026-12-04 21:12:05 UTC
# What serving.rollout.controller publishes today (its verdict's figures).
TODAY = {
    "holder": "rollout-controller web-1:4242",
    "phase": "analysing v2 at 25%",
    "canary": 2,
    "weight": 25,
    "failed_checks": 0,
    "verdict": "healthy: no regression",
    "figures": {
        "canary_requests": 120.0,
        "champion_requests": 360.0,
        "canary_error_rate": 0.0083,
        "champion_error_rate": 0.0,
        "canary_p50_ms": 31.5,
        "champion_p50_ms": 30.0,
        "canary_p95_ms": 48.2,
        "champion_p95_ms": 41.0,
        "p50_ratio": 1.05,
        "p95_ratio": 1.176,
    },
    "unreachable_gateways": [],
    "failed_loads": {},
    "at": AT,
}


def cells(view: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {row["label"]: row["cells"] for row in view["fleet"]["rows"]}


def test_todays_report_is_a_table_of_labelled_figures_per_version() -> None:
    view = controller_view(TODAY, now=AT + 7)
    assert view is not None
    assert view["fleet"]["columns"] == ["champion", "canary", RATIO]
    assert [row["label"] for row in view["fleet"]["rows"]] == ["Requests", "Error rate", "Latency p50", "Latency p95"]
    assert cells(view)["Requests"] == {"champion": "360", "canary": "120"}
    assert cells(view)["Error rate"] == {"champion": "0.00%", "canary": "0.83%"}
    assert cells(view)["Latency p95"] == {"champion": "41.0 ms", "canary": "48.2 ms", RATIO: "1.18×"}
    assert (view["at"], view["age_s"], view["stale"]) == ("2026-12-04 21:12:05 UTC", 7, False)
    assert view["holder"] == "rollout-controller on web-1 (process 4242)"
    assert view["more"] == {}  # canary and weight are on the cards; empty lists say nothing


def test_a_metric_the_page_has_never_heard_of_gets_a_row_of_its_own() -> None:
    """The controller will report time to first token, time per output token and probe quality."""
    report = TODAY | {
        "figures": {
            **TODAY["figures"],
            "canary_ttft_p95_ms": 210.0,
            "champion_ttft_p95_ms": 190.0,
            "canary_probe_accuracy": 0.97,
            "champion_probe_accuracy": 0.98,
        },
        # A per-metric shape works too.
        "metrics": {"tpot_ms": {"champion": 12.0, "canary": 12.5, "p_value": 0.2}},
    }
    view = controller_view(report, now=AT)
    assert view is not None
    shown = cells(view)
    assert shown["Time to first token p95"] == {"champion": "190.0 ms", "canary": "210.0 ms"}
    assert shown["Probe accuracy"] == {"champion": "98.00%", "canary": "97.00%"}
    assert shown["Time per output token"] == {"champion": "12.0 ms", "canary": "12.5 ms", "p_value": "0.2"}
    assert view["fleet"]["columns"] == ["champion", "canary", RATIO, "p_value"]
    # Known figures first, in the order a person compares them; new ones after, by name.
    assert [r["metric"] for r in view["fleet"]["rows"]][:4] == ["requests", "error_rate", "p50_ms", "p95_ms"]


def test_other_report_keys_are_listed_in_words_not_dropped() -> None:
    view = controller_view(TODAY | {"failed_loads": {"3": "config refused"}, "gateways": 2}, now=AT)
    assert view is not None and view["more"] == {"Failed loads": "3: config refused", "Gateways": "2"}
    assert controller_view(None, now=AT) is None
    assert controller_view(TODAY | {"figures": None}, now=AT)["fleet"] is None  # type: ignore[index]


@pytest.mark.parametrize(
    ("at", "shown"),
    [(AT, "2026-12-04 21:12:05 UTC"), ("2026-12-04T21:12:05+00:00", "2026-12-04 21:12:05 UTC"), (None, None)],
)
def test_times_are_utc_text(at: object, shown: str | None) -> None:
    assert readable_time(at) == shown


def test_holders_and_labels_in_words() -> None:
    assert readable_holder("rollout-controller web-1:4242") == "rollout-controller on web-1 (process 4242)"
    assert readable_holder("someone else") == "someone else"
    assert label("ttft_p50_ms") == "Time to first token p50"
    assert label("error_rate") == "Error rate"
    assert label("p95_ms") == "Latency p95"


def test_bools_and_non_numbers_are_not_figures() -> None:
    table = figure_table({"canary_passed": True, "canary_note": "x", "canary_p50_ms": float("nan"), "alpha": 0.01})
    assert [(r.metric, r.cells) for r in table.rows] == [("alpha", {"value": "0.01"})]


def test_one_state_word() -> None:
    analysing = controller_view(TODAY, now=AT + 1)
    idle = controller_view(TODAY | {"phase": "idle", "canary": None}, now=AT + 1)
    stale = controller_view(TODAY, now=AT + STALE_AFTER_S + 5)
    assert rollout_state(False, 2, analysing) == ("analysing", "analysing v2 at 25%")
    # The registry says paused or idle whatever the controller last said: it is the source of truth.
    assert rollout_state(True, 2, analysing)[0] == "paused"
    assert rollout_state(False, None, idle)[0] == "idle"
    assert rollout_state(False, None, analysing)[0] == "idle"
    assert rollout_state(False, 2, None)[0] == "unattended"
    assert rollout_state(False, 2, stale) == (
        "unattended",
        "the controller's last report is 65 s old (analysing v2 at 25%)",
    )
    loading = controller_view(TODAY | {"phase": "loading v2"}, now=AT)
    assert rollout_state(False, 2, loading) == ("starting", "loading v2")
