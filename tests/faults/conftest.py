"""The fault tests share one running stack (``tests.stack_fixture``) for the session; each test gets it
back healthy (every service up, the champion serving alone, no injected faults)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.stack_fixture import Stack, heal, shared_stack


@pytest.fixture(scope="session")
def running(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Stack:
    return shared_stack(pytestconfig, tmp_path_factory, tiny_checkpoint)


@pytest.fixture
def stack(running: Stack) -> Stack:
    return heal(running)
