"""Atomic outputs: write to a temp sibling, then rename, so no stage leaves half an output."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temp folder that replaces ``target`` only if the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide the output from a server running as another user
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` via a temp sibling and rename: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as pretty JSON, atomically."""
    write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def weights_bytes(folder: Path) -> int:
    """Size on disk of a checkpoint's weight files."""
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) + sum(
        p.stat().st_size for p in folder.glob("*.bin")
    )
