"""The config checker under random and mutated ``config.pbtxt`` text: ``check_paths`` never raises,
``python -m validation check-config`` exits 0 or 1 only, and a config the protobuf text parser
refuses is never accepted.

Seeds: the project's own config (``core.contract`` rendered from params.yaml, both engines) and every
model of the checker's Triton-verified cases (tests/validation/cases.py). Mutations work on tokens
(numbers, names, strings, punctuation), so most results still parse and reach the rules.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
from google.protobuf import text_format
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from tritonclient.grpc import model_config_pb2 as mc

from core.contract import (
    PackageParams,
    render_config,
    render_engine_args,
    render_vllm_config,
    vllm_engine_args,
)
from core.names import served_model_name
from core.params import RegistryParams, load_group
from tests.conftest import ROOT
from tests.fuzz.conftest import SEED
from tests.fuzz.pbtxt_mutations import proto_mutation, token_mutation
from tests.fuzz.tally import Tally
from tests.validation.cases import CASES, HELPERS, Case
from validation.__main__ import main
from validation.check import check_paths
from validation.context import STANDARD_BACKENDS, Target
from validation.findings import Finding, Severity, exit_code
from validation.vllm_config import check_vllm_paths

pytestmark = pytest.mark.slow


@cache
def seeds() -> tuple[Case, ...]:
    """Model folders to mutate: the project's rendered configs first, then the checker's cases."""
    # The count the package stage would render here (``auto`` resolves against the machine).
    params = load_group("package", PackageParams, ROOT / "params.yaml").model_copy(update={"instance_count": 2})
    name = served_model_name(load_group("registry", RegistryParams, ROOT / "params.yaml").model_name, params.version)
    # The project's own model.py beside it: its config is decoupled, and the checker reads model.py for that.
    backend = (ROOT / "serving" / "backend" / "model.py").read_text()
    project = Case(
        name,
        render_config(name, params.version, params),
        files={"warmup/messages.bin": "[]", f"{params.version}/model.py": backend},
    )
    vllm = params.model_copy(update={"engine": "vllm", "instance_kind": "gpu"})
    served_by_vllm = Case(
        f"{name}-vllm",
        render_vllm_config(f"{name}-vllm", vllm.version, vllm),
        versions=(str(vllm.version),),
        model_py=False,
        files={f"{vllm.version}/model.json": render_engine_args(vllm_engine_args(vllm))},
    )
    return (project, served_by_vllm, *(case for case in CASES if case.config is not None))


@st.composite
def configs(draw: st.DrawFn) -> tuple[Case, bytes]:
    """A seed's model folder, and the config text to put in it: mutated, random, or not UTF-8."""
    case = draw(st.sampled_from(seeds()))
    text = case.config or ""
    kind = draw(st.sampled_from(["schema"] * 4 + ["tokens"] * 3 + ["both", "random", "binary"]))
    if kind == "random":
        return case, draw(st.text(max_size=300)).encode("utf-8", "surrogatepass")
    if kind == "binary":
        return case, draw(st.binary(max_size=300))
    if kind in ("schema", "both") and parses(text.encode()):
        text = draw(proto_mutation(text))
    elif kind == "schema":
        kind = "tokens"  # a seed that is a syntax error already (the checker's cases have some)
    if kind in ("tokens", "both"):
        donors = [other.config or "" for other in seeds()]
        for _ in range(draw(st.integers(min_value=1, max_value=3))):
            text = draw(token_mutation(text, donors))
    raw = text.encode("utf-8", "surrogatepass")
    if draw(st.sampled_from([False] * 19 + [True])):  # one in twenty: a stray byte that is not UTF-8
        at = draw(st.integers(min_value=0, max_value=len(raw)))
        raw = raw[:at] + bytes([draw(st.integers(min_value=0x80, max_value=0xFF))]) + raw[at:]
    return case, raw


def parses(raw: bytes) -> bool:
    """Whether the protobuf text parser reads ``raw`` as a ModelConfig (UTF-8 text, as the checker reads files)."""
    try:
        text_format.Parse(raw.decode("utf-8"), mc.ModelConfig())
    except (ValueError, text_format.ParseError):  # ValueError: not UTF-8, or an enum number beyond 32 bits
        return False
    return True


@contextlib.contextmanager
def repository(models: list[tuple[Case, bytes]]) -> Iterator[Path]:
    """A fresh model repository: the ensemble helpers, then each model with its config replaced by the bytes."""
    with tempfile.TemporaryDirectory(prefix="fuzz-repo-") as folder:
        root = Path(folder)
        for helper in HELPERS:
            helper.write(root)
        for case, raw in models:
            model_dir = dataclasses.replace(case, config="").write(root)
            (model_dir / "config.pbtxt").write_bytes(raw)
        yield root


TARGETS = st.builds(
    Target,
    backends=st.sampled_from([STANDARD_BACKENDS, frozenset({"python"}), frozenset({"python", "vllm"})]),
    gpus=st.sampled_from([None, 0, 1, 4]),
)


def _valid(finding: Finding) -> bool:
    return (
        isinstance(finding, Finding)
        and finding.severity in (Severity.ERROR, Severity.WARNING)
        and finding.line >= 0
        and finding.column >= 0
        and bool(finding.rule)
        and bool(finding.message)
    )


def test_the_project_config_passes_unmutated() -> None:
    """The seeds the fuzzers start from: the project's config is clean, so mutations are what fail it."""
    with repository([(case, (case.config or "").encode()) for case in seeds()[:2]]) as root:
        for case in seeds()[:2]:
            findings = check_paths([root / case.name], Target(backends=frozenset({"python", "vllm"})))
            assert exit_code(findings) == 0, [finding.format() for finding in findings]


def test_check_paths_never_raises_and_never_accepts_what_protobuf_refuses() -> None:
    tally = Tally.named("config checker (check_paths + in-process CLI)")

    @seed(SEED)
    @settings(
        max_examples=500,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(model=configs(), target=TARGETS)
    def run(model: tuple[Case, bytes], target: Target) -> None:
        case, raw = model
        with repository([model]) as root:
            model_dir = root / case.name
            findings = check_paths([model_dir], target)
            assert all(_valid(finding) for finding in findings), findings
            readable = parses(raw)
            if not readable:
                assert exit_code(findings) == 1, (raw, [finding.format() for finding in findings])
            gpus = [] if target.gpus is None else ["--gpus", str(target.gpus)]
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(["check-config", str(model_dir), "--backends", ",".join(sorted(target.backends)), *gpus])
            assert code in (0, 1)
            if not readable:
                assert code == 1 and ": error: " in out.getvalue(), out.getvalue()
        tally.add("parses" if readable else "refused by protobuf")
        tally.add(f"exit {code}")

    run()
    assert tally.counts["parses"] > 100, "the mutations hardly ever reach the rules"


def test_the_cli_exits_0_or_1_and_agrees_with_check_paths() -> None:
    """``python -m validation check-config`` as a user runs it, over a repository of fuzzed models."""
    tally = Tally.named("config checker (python -m validation, subprocess)")

    @seed(SEED)
    @settings(
        max_examples=15,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(models=st.lists(configs(), min_size=1, max_size=12, unique_by=lambda model: model[0].name))
    def run(models: list[tuple[Case, bytes]]) -> None:
        with repository(models) as root:
            command = [sys.executable, "-m", "validation", "check-config", str(root)]
            result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False, timeout=120)
            tally.add(f"exit {result.returncode}")
            tally.add("models", len(models))
            assert result.returncode in (0, 1), result.stderr
            assert "Traceback" not in result.stderr, result.stderr
            expected = exit_code([*check_paths([root]), *check_vllm_paths([root])])
            assert result.returncode == expected, (result.stdout, result.stderr)
            for case, raw in models:
                if not parses(raw):
                    assert f"{root / case.name / 'config.pbtxt'}:" in result.stdout, (case.name, result.stdout)

    run()
