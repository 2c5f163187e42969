"""The security tests run against the session's stack (``tests.stack_fixture``), shared with the fault
tests; every test gets it back healthy. ``leak_check`` fails the session if a test token reached a
file (its hooks are imported here, so they run whenever this folder is collected)."""

from __future__ import annotations

from tests.faults.conftest import running, stack
from tests.security.leak_check import _remember_basetemp, pytest_sessionfinish

__all__ = ["_remember_basetemp", "pytest_sessionfinish", "running", "stack"]
