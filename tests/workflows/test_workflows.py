"""The GitHub workflows, checked offline: schema, zizmor, pinning, and that every step runs tested code."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from registry.__main__ import build_parser

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
FILES = [WORKFLOWS / "ci.yml", WORKFLOWS / "promote.yml"]
BIN = Path(sys.executable).parent
PINNED = re.compile(r"^[\w.-]+/[\w.-]+@[0-9a-f]{40}$")


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the bare key `on` as the boolean true.
    data["on"] = data.pop(True, data.get("on"))
    return data


def _steps(path: Path) -> list[dict[str, Any]]:
    return [step for job in _load(path)["jobs"].values() for step in job["steps"]]


def _make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+):", (ROOT / "Makefile").read_text(), flags=re.MULTILINE))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_matches_the_github_workflow_schema(path: Path) -> None:
    done = subprocess.run(
        [BIN / "check-jsonschema", "--builtin-schema", "vendor.github-workflows", path],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_zizmor_finds_nothing_even_pedantic() -> None:
    done = subprocess.run(
        [BIN / "zizmor", "--offline", "--persona", "pedantic", "--no-progress", *FILES],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_least_privilege_timeouts_and_pinned_actions(path: Path) -> None:
    workflow = _load(path)
    assert workflow["permissions"] == {"contents": "read"}
    assert "concurrency" in workflow
    for job in workflow["jobs"].values():
        assert 0 < job["timeout-minutes"] <= 90
        assert "permissions" not in job or job["permissions"] == {"contents": "read"}
    text = path.read_text()
    for step in _steps(path):
        if "uses" in step:
            assert PINNED.match(step["uses"]), step["uses"]
            assert re.search(re.escape(step["uses"]) + r" # v\d+\.\d+\.\d+", text), f"{step['uses']}: no version note"
        if "actions/checkout" in step.get("uses", ""):
            assert step["with"]["persist-credentials"] is False  # no token left in .git for later steps


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_run_steps_call_only_make_targets_or_the_registry_cli(path: Path) -> None:
    """No expressions in scripts (template injection), and only entry points the tests exercise."""
    targets = _make_targets()
    parser = build_parser()
    for step in _steps(path):
        if "run" not in step:
            continue
        script: str = step["run"]
        assert "${{" not in script, f"{step.get('name')}: pass inputs through env, not into the script"
        command = script.split(">>")[0]
        words = shlex.split(command.replace('"$', '"SAMPLE_').strip())
        if words[0] == "make":
            named = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
            assert named and set(named) <= targets, f"{path.name}: make {named} not in Makefile ({sorted(targets)})"
        else:
            assert words[:3] == [".venv/bin/python", "-m", "registry"], script
            values = {"SAMPLE_VERSION": "3", "SAMPLE_WEIGHT": "25", "SAMPLE_REASON": "because"}
            args = parser.parse_args([values.get(w, w) for w in words[3:]])
            assert args.command in {
                "status",
                "history",
                "promote",
                "set-weight",
                "step",
                "pause",
                "resume",
                "abort",
                "rollback",
            }


def test_promotion_is_dispatched_protected_and_serialized() -> None:
    workflow = _load(WORKFLOWS / "promote.yml")
    dispatch = workflow["on"]["workflow_dispatch"]["inputs"]
    assert dispatch["action"]["options"] == [
        "canary",
        "set-weight",
        "step",
        "pause",
        "resume",
        "promote",
        "abort",
        "rollback",
    ]
    assert set(dispatch) == {"action", "version", "weight", "reason"}
    assert workflow["concurrency"]["cancel-in-progress"] is False
    (job,) = workflow["jobs"].values()
    assert job["environment"] == "production"
    assert "env" not in job, "secrets belong on the steps that use them"
    actions = {step["if"]: step["run"] for step in job["steps"] if "if" in step and "inputs.action" in step["if"]}
    assert set(actions) == {f"inputs.action == '{a}'" for a in dispatch["action"]["options"]}
    for step in job["steps"]:
        secrets = {key for key, value in step.get("env", {}).items() if "secrets." in str(value)}
        if "-m registry" in step.get("run", ""):
            assert step["env"]["MLFLOW_TRACKING_URI"] == "${{ secrets.MLFLOW_TRACKING_URI }}"
            # The registry CLI reads the MLflow secrets and nothing else: no other secret reaches it.
            assert secrets <= {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN"}, step.get("name")
        else:
            assert not secrets, f"{step.get('name')} gets secrets it does not use"


def test_ci_runs_install_test_pipeline_and_reports() -> None:
    steps = _steps(WORKFLOWS / "ci.yml")
    runs = [step["run"] for step in steps if "run" in step]
    assert runs[:3] == ["make install", "make test", "make demo"]
    assert any("metrics-diff" in run and "$GITHUB_STEP_SUMMARY" in run for run in runs)
    upload = next(step for step in steps if "upload-artifact" in step.get("uses", ""))
    assert upload["if"] == "always()"
