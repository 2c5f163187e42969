"""Faults while building a version, before anything serves it: a bad config.pbtxt, and a full disk.

The full disk is real where this runs as root: a 6 MiB tmpfs, on which a first ``package`` run fits
and a second (a full copy, since outputs are written aside and renamed) does not. Without the
right to mount, the same stage runs with ``shutil.copyfile`` patched to fail with ENOSPC once a
byte budget is spent: the same error at the same place, without the kernel's word for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from core.manifest import tree_digests
from core.stage import StageError
from pipelines import register as register_stage
from pipelines import validate as validate_stage
from registry.errors import NotValidatedError
from serving.triton import launcher
from serving.triton.packaging import package
from tests.conftest import ROOT
from tests.faults.test_canary_faults import break_config
from tests.serving.conftest import BACKEND, serving_params
from tests.stack_fixture import MODEL, write_build

pytestmark = pytest.mark.slow


def test_a_bad_config_is_refused_before_any_server_starts(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = write_build(tmp_path / "project", 1, tiny_checkpoint, edit=break_config)
    started: list[Path] = []
    monkeypatch.setattr(launcher.TritonServer, "start", lambda server: started.append(server.model_repository))
    answers = tmp_path / "answers.jsonl"
    answers.write_text("")
    verdict = tmp_path / "validate.json"
    package_metrics = inputs.package_metrics

    code = validate_stage.main(
        [
            "--repository", str(inputs.triton_repo), "--package-metrics", str(package_metrics),
            "--base-answers", str(answers), "--golden", str(tmp_path / "no-golden-needed"),
            "--report", str(tmp_path / "report"), "--answers", str(tmp_path / "served.jsonl"),
            "--metrics", str(verdict),
        ]
    )  # fmt: skip

    assert code == 1 and started == [] and not (tmp_path / "served.jsonl").exists()
    written = json.loads(verdict.read_text())
    assert written["passed"] is False
    (failure,) = written["failures"]
    assert "Triton would refuse it, so no server was started" in failure
    # path:line of the broken field in the generated config, with Triton's own words.
    lines = {
        n
        for n, text in enumerate((inputs.triton_repo / "qwen3-vl-v1" / "config.pbtxt").read_text().splitlines(), 1)
        if "preferred_batch_size" in text
    }
    found = re.search(r"config\.pbtxt:(\d+): error: dynamic batching preferred size must be <= max batch size", failure)
    assert found is not None and int(found.group(1)) in lines, failure
    # And the register stage refuses the version on that verdict, before it talks to MLflow. (Its
    # message names a missing served_digest, not the failed gate: the failure verdict lacks it.)
    failed = inputs.model_copy(update={"validate_metrics": verdict})
    with pytest.raises((NotValidatedError, StageError)):
        register_stage.build_candidate(failed)


# -- a full disk --------------------------------------------------------------------------------------

DISK_BYTES = 6 * 1024 * 1024
#: Room left for the shim's run: less than one packaged version (the first run's is already there).
SHIM_ROOM = DISK_BYTES // 4

#: Runs the package stage with every file copy under ``root`` counted against ``budget`` bytes.
_ENOSPC_SHIM = """
import errno, os, runpy, shutil, sys

budget, root = int(sys.argv[1]), os.path.realpath(sys.argv[2])
spent = 0
copyfile = shutil.copyfile


def counted(src, dst, *, follow_symlinks=True):
    global spent
    if os.path.realpath(dst).startswith(root):
        size = os.path.getsize(src)
        if spent + size > budget:
            with open(src, "rb") as source, open(dst, "wb") as target:
                target.write(source.read(budget - spent))  # what fits, as on a full disk
            spent = budget
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), dst)
        spent += size
    return copyfile(src, dst, follow_symlinks=follow_symlinks)


shutil.copyfile = counted
sys.argv = ["pipelines.package", *sys.argv[3:]]
runpy.run_module("pipelines.package", run_name="__main__")
"""


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size: int) -> Iterator[Path]:
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the ENOSPC shim variant covers it")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def package_stage(disk: Path, params: Path, prefix: list[str]) -> subprocess.CompletedProcess[str]:
    argv = [
        "--checkpoint", str(ROOT / "tiny_model" / "checkpoint"), "--backend", str(BACKEND),
        "--repository", str(disk / "triton-models"), "--metrics", str(disk / "metrics" / "package.json"),
        "--params", str(params),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *prefix, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def write_params(path: Path, max_new_tokens: int) -> Path:
    package_group = serving_params(version=1, max_new_tokens=max_new_tokens).model_dump(mode="json")
    path.write_text(yaml.safe_dump({"registry": {"model_name": MODEL, "experiment": "x"}, "package": package_group}))
    return path


@pytest.fixture(params=["tmpfs", "enospc-shim"])
def full_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """A folder with room for one packaged version; and how to run the stage there (the second run fails)."""
    if request.param == "tmpfs":
        with tmpfs(tmp_path / "disk", DISK_BYTES) as disk:
            yield disk, ["-m", "pipelines.package"]
    else:
        disk = tmp_path / "disk"
        disk.mkdir()
        yield disk, ["-c", _ENOSPC_SHIM, str(SHIM_ROOM), str(disk)]


def test_a_full_disk_fails_the_stage_clearly_and_keeps_the_previous_output(
    full_disk: tuple[Path, list[str]], tmp_path: Path
) -> None:
    disk, failing = full_disk
    first = package_stage(disk, write_params(tmp_path / "params-1.yaml", 8), ["-m", "pipelines.package"])
    assert first.returncode == 0, first.stderr
    output = disk / "triton-models" / f"{MODEL}-v1"
    before = tree_digests(output)
    metrics = (disk / "metrics" / "package.json").read_bytes()

    second = package_stage(disk, write_params(tmp_path / "params-2.yaml", 6), failing)

    print(f"\nsecond package run on a full disk: exit {second.returncode}; {second.stderr.strip().splitlines()[-1]}")
    assert second.returncode != 0
    assert "No space left on device" in second.stderr and str(disk / "triton-models") in second.stderr
    assert tree_digests(output) == before  # the previous build, byte for byte
    assert 'key: "MAX_NEW_TOKENS"\n  value {\n    string_value: "8"' in (output / "config.pbtxt").read_text()
    assert (disk / "metrics" / "package.json").read_bytes() == metrics
    assert sorted(p.name for p in (disk / "triton-models").iterdir()) == [output.name]  # no half-written copy


def test_a_full_disk_is_reported_in_the_stages_own_words(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    shim = ["-c", _ENOSPC_SHIM, "1024", str(disk)]

    failed = package_stage(disk, write_params(tmp_path / "params.yaml", 8), shim)

    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("package: error: cannot ") and "No space left on device" in last
    assert last.endswith("the previous output is untouched")


def test_the_packaged_tiny_model_fits_the_disk_once_but_not_twice(tmp_path: Path) -> None:
    """The sizing the full-disk test relies on (else it would pass without a disk ever filling)."""
    result = package(ROOT / "tiny_model" / "checkpoint", BACKEND, tmp_path, MODEL, serving_params(version=1))
    size = sum(p.stat().st_size for p in (tmp_path / result.triton_model).rglob("*") if p.is_file())
    assert SHIM_ROOM < size < DISK_BYTES < 2 * size
