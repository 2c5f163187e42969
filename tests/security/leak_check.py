"""A pytest plugin: at the end of the session, no file pytest's run or the project's ``.run/`` holds may
contain a token the tests handed to a service (``leaks.KNOWN_TOKENS``); else the session fails.

``tests/security/conftest.py`` imports it, so it runs whenever ``tests/security`` is collected (as
in ``make test``). For every subset too: ``pytest_plugins = ["tests.security.leak_check"]`` in
``tests/conftest.py`` (then drop the import from ``tests/security/conftest.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.security.leaks import KNOWN_TOKENS, scan
from tests.stack_fixture import live_stacks

_BASETEMP = pytest.StashKey[Path]()


@pytest.fixture(scope="session", autouse=True)
def _remember_basetemp(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> None:
    pytestconfig.stash[_BASETEMP] = tmp_path_factory.getbasetemp()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session when any file of this run (or ``.run/``) holds a known test token."""
    basetemp = session.config.stash.get(_BASETEMP, None)
    if basetemp is None:
        return
    # nginx's folder of a stack lies outside the base temp folder (see tests.stack_fixture).
    edge = [stack.edge_dir for stack in live_stacks()]
    leaks = scan([basetemp, ROOT / ".run", *edge], KNOWN_TOKENS)
    if not leaks:
        return
    lines = [f"  {path}: holds {', '.join(t[:12] + '...' for t in tokens)}" for path, tokens in sorted(leaks.items())]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", "admin token written to a file", red=True)
        reporter.write_line("\n".join(lines))
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
