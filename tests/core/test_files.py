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
    target = tmp_path / "repo" / "model"
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
    # No temp folder left behind; the previous tree stays until the next swap, beside the folder.
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["model"]
    assert sorted(p.name for p in (tmp_path / ".repo.swap").iterdir()) == ["model.previous"]


def test_a_failed_build_or_swap_keeps_the_old_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "repo" / "model"
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
    assert [p.name for p in (tmp_path / "repo").iterdir()] == ["model"]  # no half-written tree anywhere
    assert list((tmp_path / ".repo.swap").iterdir()) == []


def test_swap_leftovers_stay_out_of_the_folder_that_holds_the_target(tmp_path: Path) -> None:
    """A Triton repository holds models only: a second build leaves nothing else in it (Triton takes
    every subfolder, hidden ones too, for a model and refuses the repository over a stray one)."""
    repository = tmp_path / "triton-models"
    for marker in ("1", "2", "3"):
        _write(repository / "qwen3-vl-v1", marker)
        _write(repository / "qwen3-vl-v2", marker)

    assert sorted(p.name for p in repository.iterdir()) == ["qwen3-vl-v1", "qwen3-vl-v2"]
    assert (repository / "qwen3-vl-v1" / "config.pbtxt").read_text() == "3"
    leftovers = sorted(p.name for p in (tmp_path / ".triton-models.swap").iterdir())
    assert leftovers == ["qwen3-vl-v1.previous", "qwen3-vl-v2.previous"]
    assert (tmp_path / ".triton-models.swap" / "qwen3-vl-v1.previous" / "config.pbtxt").read_text() == "2"


def test_without_a_writable_folder_beside_it_the_swap_stages_hidden_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "repo" / "model"
    real_access = os.access
    monkeypatch.setattr(files.os, "access", lambda path, mode: Path(path) != tmp_path and real_access(path, mode))
    _write(target, "1")
    _write(target, "2")

    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == [".model.previous", "model"]
    assert not (tmp_path / ".repo.swap").exists()
