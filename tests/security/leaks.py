"""Find secrets in files: the admin tokens the tests run services with must never land in a file.

Used twice: by a test that greps everything one stack run wrote (logs, nginx's access and error
logs, Triton's log, MLflow's store), and at the end of every session that collects
``tests/security`` (``conftest.pytest_sessionfinish``), over pytest's base temp folder and the
project's ``.run/``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from tests.gateway.conftest import TOKEN as GATEWAY_TEST_TOKEN
from tests.stack_fixture import TOKEN as STACK_TOKEN

#: Tokens the test suite hands to real services. Only distinctive ones: a token of 32 "x" would match
#: any file of padding.
KNOWN_TOKENS = (STACK_TOKEN, GATEWAY_TEST_TOKEN)
#: The tests' own sources define the tokens, and copies of the tree turn up under ``.run/`` (the
#: benchmarks copy it there); no service writes Python source or bytecode.
SOURCE_SUFFIXES = (".py", ".pyc")
_CHUNK = 1 << 20


def files_under(roots: Iterable[Path]) -> Iterator[Path]:
    """Every regular file below ``roots`` but Python sources; links not followed (a link to a model folder
    is read once, where it points)."""
    for root in roots:
        if not root.is_dir():
            continue
        for folder, _, names in os.walk(root, followlinks=False):
            for name in names:
                path = Path(folder) / name
                try:
                    mode = path.lstat().st_mode
                except OSError:
                    continue  # removed meanwhile (a service still runs)
                if stat.S_ISREG(mode) and not name.endswith(SOURCE_SUFFIXES):
                    yield path


def contains(path: Path, secrets: Iterable[bytes]) -> list[bytes]:
    """Which of ``secrets`` occur in the file (read in chunks, overlapping so none is cut in two)."""
    wanted = [s for s in secrets if s]
    overlap = max((len(s) for s in wanted), default=1) - 1
    found: set[bytes] = set()
    tail = b""
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                window = tail + chunk
                found.update(s for s in wanted if s in window)
                tail = window[-overlap:] if overlap else b""
    except OSError:
        return []
    return sorted(found)


def scan(roots: Iterable[Path], secrets: Iterable[str]) -> dict[Path, list[str]]:
    """Files under ``roots`` holding any of ``secrets``, with which ones."""
    encoded = {s.encode(): s for s in secrets}
    hits = {}
    for path in files_under(roots):
        if found := contains(path, encoded):
            hits[path] = [encoded[s] for s in found]
    return hits
