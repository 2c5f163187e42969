"""Atomic outputs: a reader sees the old tree or the new one, never a missing or half-written one."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from core import files
from core.files import atomic_dir


def _read(folder: int, name: str) -> bytes:
    fd = os.open(name, os.O_RDONLY, dir_fd=folder)
    try:
        return os.read(fd, 1 << 20)
    finally:
        os.close(fd)


def _write(target: Path, marker: str) -> None:
    with atomic_dir(target) as tmp:
        (tmp / "weights.bin").write_bytes(marker.encode() * 1000)
        (tmp / "config.pbtxt").write_text(marker)


def test_a_reader_never_sees_the_target_missing_or_half_written(tmp_path: Path) -> None:
    target = tmp_path / "model"
    _write(target, "0")
    seen: list[str] = []
    stop = threading.Event()

    def read() -> None:
        # Like a server loading a model: open the folder once, then read its files from it.
        while not stop.is_set():
            try:
                folder = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                seen.append("missing")
                continue
            try:
                config = _read(folder, "config.pbtxt")
                weights = _read(folder, "weights.bin")
            finally:
                os.close(folder)
            seen.append("whole" if weights == config * 1000 else "mixed")

    reader = threading.Thread(target=read)
    reader.start()
    for build in range(1, 60):
        _write(target, str(build % 10))
        time.sleep(0.02)  # a reader gets a whole build cycle (the previous tree lives one swap)
    stop.set()
    reader.join()

    assert seen and set(seen) == {"whole"}, {kind: seen.count(kind) for kind in set(seen)}
    # No temp folder left behind; the previous tree stays until the next swap.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.previous", "model"]


def test_a_failed_build_or_swap_keeps_the_old_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model"
    _write(target, "1")

    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "config.pbtxt").write_text("half")
        raise RuntimeError("the build failed")

    def refuse(a: Path, b: Path) -> None:
        raise OSError(28, "No space left on device", str(b))

    monkeypatch.setattr(files, "exchange", refuse)
    with pytest.raises(OSError, match="No space"):
        _write(target, "2")

    assert (target / "config.pbtxt").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no half-written tree anywhere
