"""Fixtures for the fuzzers: one seed for every run, Hypothesis' files kept out of the working tree,
and the real stack (Triton, MLflow, the gateway from ``tests.gateway.e2e``) behind a real nginx edge."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis.configuration import set_hypothesis_home_dir

from serving.edge.launcher import Edge
from serving.edge.settings import EdgeSettings
from serving.triton.launcher import free_ports

# The session's real services, shared with the end-to-end tests (imported fixtures are registered here).
from tests.fuzz.tally import Tally
from tests.gateway.e2e.conftest import Gateway, gateway, mlflow, set_rollout, triton

__all__ = ["gateway", "mlflow", "set_rollout", "triton"]

#: Every fuzzer draws from this seed; ``FUZZ_SEED=<n>`` replays another run.
SEED = int(os.environ.get("FUZZ_SEED", "20240607"))


def pytest_report_header() -> str:
    return f"fuzz seed: {SEED} (set FUZZ_SEED to replay another)"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if Tally.all:
        terminalreporter.section(f"fuzz cases (seed {SEED})")
        for tally in Tally.all.values():
            terminalreporter.write_line(tally.line())


@pytest.fixture(scope="session", autouse=True)
def hypothesis_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Hypothesis' caches in a temporary folder, never a ``.hypothesis`` folder in the working tree."""
    home = tmp_path_factory.mktemp("hypothesis")
    set_hypothesis_home_dir(str(home))
    try:
        yield home
    finally:
        set_hypothesis_home_dir(None)


@pytest.fixture(scope="session")
def edge(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    """nginx in front of the session's gateway, as clients reach it.

    The rate limit is raised for the fuzzer: it sends requests back to back from one address, and the
    point is to reach the gateway, not nginx's 429 (the edge tests cover the limit itself).
    """
    port, internal = free_ports(2)
    settings = EdgeSettings(
        port=port,
        internal_port=internal,
        upstreams=[gateway.url.removeprefix("http://")],
        rate_per_s=100_000,
        burst=100_000,
        read_timeout_s=60,
    )
    with Edge(settings, tmp_path_factory.mktemp("edge-run")) as running:
        yield running
