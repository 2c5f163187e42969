"""`dvc repro` in a fresh copy of the repository, as a clone has it: it reproduces the committed
dvc.lock and metrics exactly and leaves `git status` clean; then no-op, lint, and param changes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, *, plain_shell: bool = False) -> str:
    env = os.environ | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(cwd),
    }
    if plain_shell:  # as a new user's shell has it: no HF_HUB_OFFLINE, which the Makefile and conftest export
        env = {k: v for k, v in env.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's files (tracked and not ignored) in a fresh git repository, as a clone has them."""
    dest = tmp_path_factory.mktemp("clone")
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"]):
        _run(cmd, dest)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clone"], dest)
    return dest


def test_repro_runs_every_stage_and_reproduces_the_committed_lock(repo: Path) -> None:
    out = _run(["dvc", "repro"], repo, plain_shell=True)
    for stage in ("golden", "base_model", "quantize", "package", "validate", "register"):
        assert f"Running stage '{stage}'" in out
    # Same hashes, same metrics: nothing a fresh clone's demo writes is machine-dependent.
    status = _run(["git", "status", "--porcelain"], repo)
    assert status == "", f"a fresh repro changed tracked files:\n{status}\n{_run(['git', 'diff'], repo)}"
    base = json.loads((repo / "metrics/base_model.json").read_text())
    quant = json.loads((repo / "metrics/quantize.json").read_text())
    assert base["golden_accuracy"] >= 0.95
    assert quant["method"] == "bnb-nf4"
    assert quant["golden_accuracy"] >= base["golden_accuracy"] - 0.02
    assert quant["weights_bytes"] < base["weights_bytes"]
    assert set(quant) >= {"method", "weights_bytes", "source_weights_bytes", "size_ratio", "golden_accuracy"}
    assert "seconds" in json.loads((repo / "reports/quantize.json").read_text())
    assert (repo / "artifacts/quantized/config.json").is_file()
    assert len((repo / "artifacts/golden/golden.jsonl").read_text().splitlines()) == 300
    assert (repo / "triton-models/qwen3-vl-v1/1/model.py").is_file()
    assert (repo / "triton-models/qwen3-vl-v1/config.pbtxt").is_file()
    validate = json.loads((repo / "metrics/validate.json").read_text())
    assert validate["passed"] is True and validate["accuracy"] >= 0.95
    assert (repo / "reports/validate/report.html").is_file()
    register = json.loads((repo / "artifacts/register.json").read_text())
    assert register["alias"] == "candidate" and register["version"] == 1


def test_the_demo_journey_promotes_a_canary_and_rolls_back_a_bad_one(repo: Path) -> None:
    """`make demo`'s second half, on the repro above: champion, canary promoted, a faulty one rolled back."""
    out = _run([sys.executable, "-m", "demo", "--run-dir", str(repo / ".run" / "demo")], repo)

    summary = json.loads(next(line for line in reversed(out.splitlines()) if line.startswith('{"')))
    assert summary["client_errors"] == 0, out
    assert (summary["promoted"], summary["champion"], summary["rolled_back"]) == (2, 2, 3)
    assert summary["rollback_s"] <= 10
    # v3 may answer a few requests at its first step, before its fault is injected.
    assert summary["requests"] > 100 and {"1", "2"} <= set(summary["by_version"]) <= {"1", "2", "3"}
    steps = json.loads((repo / ".run" / "demo" / "journey.json").read_text())["steps"]
    moves = [step["what"] for step in steps]
    stepped = [int(m.group(1)) for what in moves if (m := re.match(r"canary v2 stepped \d+% -> (\d+)%", what))]
    assert stepped == [25, 50, 100], moves
    assert any(what.startswith("canary v3 rolled back") for what in moves), moves


def test_lint_and_imports_still_work_after_a_demo(repo: Path) -> None:
    # The local MLflow store must not shadow the `mlflow` package (it once lived in `mlflow/`).
    _run([sys.executable, "-m", "ruff", "check", "."], repo)
    _run([sys.executable, "-c", "import mlflow.exceptions"], repo)
    assert (repo / ".mlflow").is_dir() and not (repo / "mlflow").exists()


def test_second_repro_does_nothing(repo: Path) -> None:
    out = _run(["dvc", "repro"], repo)
    assert "Running stage" not in out
    assert "up to date" in out


def test_metrics_show_lists_the_figures(repo: Path) -> None:
    out = _run(["dvc", "metrics", "show"], repo)
    assert "golden_accuracy" in out and "size_ratio" in out


def test_method_change_reruns_only_quantize_onwards(repo: Path) -> None:
    out = _run(["dvc", "exp", "run", "-S", "quantize.method=bnb-int8"], repo)
    assert "Running stage 'quantize'" in out
    assert "Running stage 'golden'" not in out
    assert "Running stage 'base_model'" not in out
    assert "Running stage 'register'" in out
    assert json.loads((repo / "metrics/quantize.json").read_text())["method"] == "bnb-int8"
    assert json.loads((repo / "artifacts/register.json").read_text())["version"] == 2


def test_switching_back_registers_again_instead_of_restoring_a_stale_answer(repo: Path) -> None:
    """DVC's run cache could restore register's output without registering; persist keeps it from that."""
    out = _run(["dvc", "exp", "run", "-S", "quantize.method=bnb-nf4"], repo)

    assert "Running stage 'register'" in out  # not "Restored stage 'register' from run-cache"
    register = json.loads((repo / "artifacts/register.json").read_text())
    # The same build as the first repro: register finds v1 again and makes it the candidate.
    assert (register["version"], register["alias"]) == (1, "candidate")
    status = subprocess.run(
        [sys.executable, "-m", "registry", "status", "--json"],
        cwd=repo,
        env=os.environ | {"PYTHONPATH": str(repo)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(status.stdout)["candidate"]["version"] == 1


def _status(repo: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "registry", "status", "--json"],
        cwd=repo,
        env=os.environ | {"PYTHONPATH": str(repo)},
        capture_output=True,
        text=True,
        check=True,
    )
    status: dict[str, Any] = json.loads(proc.stdout)
    return status


def test_a_temp_experiment_registers_into_the_projects_store(repo: Path, tmp_path: Path) -> None:
    """`dvc exp run --temp` runs in a copy under .dvc/tmp/exps/ that DVC deletes afterwards: the build
    must land in the project's own store (.mlflow/), not in the copy's."""
    from registry import materialize
    from registry.settings import RegistrySettings
    from registry.store import Store

    before = _status(repo)["candidate"]["version"]
    out = _run(["dvc", "exp", "run", "--temp", "-S", "package.version=101"], repo)

    assert "Running stage 'register'" in out, out
    assert not [p for p in (repo / ".dvc" / "tmp" / "exps").glob("tmp*") if p.is_dir()], "the copy is still there"
    candidate = _status(repo)["candidate"]
    assert candidate["version"] > before, f"no new candidate in {repo / '.mlflow'}:\n{out}"
    settings = RegistrySettings(project_dir=repo, tracking_uri=None, store_dir=None)
    store = Store(settings)
    run = store.client.get_run(candidate["run_id"])
    assert (run.data.tags["package.model"], run.data.params["package.version"]) == ("qwen3-vl-v101", "101")
    # Its files outlived the copy: they materialize, every one verified.
    folder = materialize.materialize_version(store, candidate["version"], tmp_path / "served")
    assert 'name: "qwen3-vl-v101"' in (folder / "config.pbtxt").read_text()


def test_strict_accuracy_gate_fails_with_the_rule_named(repo: Path) -> None:
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        ["dvc", "exp", "run", "-S", "validate.min_accuracy=0.999"],
        cwd=repo,
        env=env | {"PYTHONPATH": str(repo)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "gate FAILED" in output
    assert "validate.min_accuracy: accuracy" in output and "below the minimum 0.9990" in output
    assert "Running stage 'register'" not in output
