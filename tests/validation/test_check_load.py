"""check-load: a real Triton loads each model of a repository and every version is reported."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from tests.validation.cases import ECHO_MODEL_PY, IO, WARMUP, model
from validation.__main__ import main
from validation.check import check_paths
from validation.context import Target
from validation.findings import Severity

pytestmark = [pytest.mark.triton, pytest.mark.slow]

WARM = WARMUP % (1, "INPUT0", "TYPE_FP32", "4", "zero_data: true")


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("check-load")
    model("good", "version_policy { all {} }\n" + WARM, versions=("1", "2")).write(repo)
    model("bad_dims", WARM, io=IO.replace("dims: [4]", "dims: [0]", 1)).write(repo)
    model("gpu_only", "instance_group [{ kind: KIND_GPU }]\n" + WARM).write(repo)
    model("hangs", WARM, model_py=False).write(repo)
    # Decoupled, as this project's model.py is: warmed up through its response sender.
    model("streams", "model_transaction_policy { decoupled: true }\n" + WARM).write(repo)
    # Decoupled in its config only: its execute returns the responses (Triton refuses, or dies, at warmup).
    decoupled = "model_transaction_policy { decoupled: true }\n" + WARM
    model("returns", decoupled, model_py=False, files={"1/model.py": ECHO_MODEL_PY}).write(repo)
    return repo


@pytest.fixture(scope="module")
def load_report(repository: Path) -> tuple[int, list[str]]:
    # capsys is per test; this report is made once per module, so capture stdout by hand.
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["check-load", str(repository), "--timeout", "3"])
    return code, out.getvalue().splitlines()


def test_every_version_is_reported(load_report: tuple[int, list[str]], repository: Path) -> None:
    code, lines = load_report
    assert code == 1
    assert "good:1: READY" in lines and "good:2: READY" in lines
    assert "streams:1: READY" in lines
    bad = {line.split(":", 1)[0]: line for line in lines if ": error: " in line}
    failed = ("bad_dims", "gpu_only", "hangs", "returns")
    assert set(bad) == {str(repository / name / "config.pbtxt") for name in failed}
    returns = bad[str(repository / "returns" / "config.pbtxt")]
    assert "is using the decoupled mode and the execute function must return None" in returns
    assert "model input 'INPUT0' dimension must be integer >= 1" in bad[str(repository / "bad_dims" / "config.pbtxt")]
    assert "has kind KIND_GPU but no GPUs are available" in bad[str(repository / "gpu_only" / "config.pbtxt")]
    hang = bad[str(repository / "hangs" / "config.pbtxt")]
    assert "no answer within 3 s" in hang and "Python model file not found" in hang


def test_check_config_flags_the_same_models(load_report: tuple[int, list[str]], repository: Path) -> None:
    findings = check_paths([repository], Target(backends=frozenset({"python"}), gpus=0))
    flagged = {f.path.parent.name for f in findings if f.severity is Severity.ERROR}
    assert flagged == {"bad_dims", "gpu_only", "hangs", "returns"}
