"""The security tests run against the session's stack (``tests.stack_fixture``), shared with the fault
tests; every test gets it back healthy. ``leak_check`` fails the session if a test token reached a
file (its hooks are imported here, so they run whenever this folder is collected)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.security.leak_check import _remember_basetemp, pytest_sessionfinish
from tests.stack_fixture import Stack, heal, shared_stack

__all__ = ["_remember_basetemp", "pytest_sessionfinish", "running", "stack"]


@pytest.fixture(scope="session")
def running(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Stack:
    return shared_stack(pytestconfig, tmp_path_factory, tiny_checkpoint)


@pytest.fixture
def stack(running: Stack) -> Stack:
    return heal(running)
