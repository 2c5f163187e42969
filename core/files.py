"""Atomic outputs: write to a temp sibling, then swap it in, so no stage leaves half an output."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: The folder beside ``<parent>`` where swaps of ``<parent>/<name>`` stage: ``.<parent>.swap``.
SWAP_SUFFIX = ".swap"


def staging_dir(target: Path) -> Path:
    """Where a swap of ``target`` builds the new tree and leaves the old one: beside the folder that
    holds ``target``, never in it. Every subfolder of a Triton model repository is a model to Triton
    (a leftover ``.qwen3-vl-v1.previous`` there makes it refuse the whole repository), and a DVC out's
    folder holds only what its stage wrote. Falls back to ``target``'s own folder only where the one
    beside it is not on the same filesystem (a rename cannot cross one) or cannot be written.
    """
    parent = target.parent.resolve()
    outer = parent.parent
    staging = outer / f".{parent.name}{SWAP_SUFFIX}"
    if outer == parent or not os.access(outer, os.W_OK) or outer.stat().st_dev != parent.stat().st_dev:
        return parent
    staging.mkdir(exist_ok=True)
    return staging


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temp folder that replaces ``target`` only if the block succeeds.

    The swap is one step, so a reader finds the old tree or the new one, never none; the old tree is
    kept as ``<name>.previous`` in ``staging_dir(target)`` until the next swap, so a reader still
    inside it (a server loading the model it holds open) can finish.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(target)
    hidden = "." if staging == target.parent.resolve() else ""  # in target's own folder: at least hidden
    tmp = Path(tempfile.mkdtemp(prefix=f"{hidden}{target.name}.tmp-", dir=staging))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide the output from a server running as another user
    try:
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            exc.add_note(f"while building {target}")  # the temp path alone does not say which output
        raise
    if not target.exists() and not target.is_symlink():
        tmp.rename(target)
        return
    previous = staging / f"{hidden}{target.name}.previous"
    shutil.rmtree(previous, ignore_errors=True)
    try:
        exchange(tmp, target)
    except BaseException:
        # The old tree is still in place, whole: drop the new one and report why.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.rename(previous)  # the old tree, now under the temp name


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> None:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``): a reader of either path
    sees the old entry or the new one, never none. ``OSError`` where the system cannot do it."""
    import ctypes
    import errno

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available here", str(b))
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"cannot swap {a} and {b} in one step: {os.strerror(code)}", str(b))


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
