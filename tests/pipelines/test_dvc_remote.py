"""A DVC remote (a local folder standing in for shared storage): what `dvc repro` produced is pushed, and a
checkout without the cache or the outputs, or another clone, gets it back byte for byte with `dvc pull`.

Only the ``golden`` stage runs (seconds, not the whole pipeline): push and pull do not care which stage made
an output.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.pipelines.test_dvc_e2e import _run, repo

__all__ = ["repo"]  # the fresh copy of the repository, as a clone has it (module-scoped there and here)

pytestmark = pytest.mark.slow

STAGE = "golden"
OUTPUT = "artifacts/golden"


def _digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_push_then_pull_restores_the_outputs_byte_for_byte(repo: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    _run(["dvc", "repro", STAGE], repo)
    produced = _digests(repo / OUTPUT)
    assert "golden.jsonl" in produced and len(produced) > 1, produced

    _run(["dvc", "remote", "add", "-d", "local", str(remote)], repo)
    pushed = _run(["dvc", "push", STAGE], repo)
    assert "pushed" in pushed, pushed
    assert any(p.is_file() for p in remote.rglob("*")), "nothing reached the remote"
    assert "in sync" in _run(["dvc", "status", "--cloud", STAGE], repo)

    # A checkout that never ran the stage: no cache, no outputs.
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / OUTPUT)
    assert "not in cache" in _run(["dvc", "status", STAGE], repo)
    _run(["dvc", "pull", STAGE], repo)
    assert _digests(repo / OUTPUT) == produced
    assert "up to date" in _run(["dvc", "status", STAGE], repo)

    # Another machine: a clone of the commit with the remote and the lock (as a user commits them after
    # `dvc repro` and `dvc push`) pulls the same bytes.
    _run(["git", "add", ".dvc/config", "dvc.lock"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "dvc remote"], repo)
    other = tmp_path / "other-clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(other)], check=True, timeout=120)
    _run(["dvc", "pull", STAGE], other)
    assert _digests(other / OUTPUT) == produced
    assert "up to date" in _run(["dvc", "status", STAGE], other)
    assert _run(["git", "status", "--porcelain"], other) == "", "pulling changed tracked files"
