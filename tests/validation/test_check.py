"""check-config without a server: parse errors, paths, target-dependent rules, warnings, speed, CLI."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.validation.cases import IO, WARMUP, MakeModel, model
from tests.validation.cases import step as step_text
from validation.__main__ import main
from validation.check import check_paths
from validation.context import Target
from validation.findings import Severity, exit_code

ROOT = Path(__file__).resolve().parents[2]
WARM = WARMUP % (1, "INPUT0", "TYPE_FP32", "4", "zero_data: true")


def errors(path: Path, target: Target | None = None) -> list[str]:
    return [f.format() for f in check_paths([path], target) if f.severity is Severity.ERROR]


def rules(path: Path, target: Target | None = None) -> set[str]:
    return {f.rule for f in check_paths([path], target)}


def test_syntax_error_reports_line_and_column(make_model: MakeModel) -> None:
    folder = make_model("m", "dynamic_batching {\n  preferred_batch_size: [2, x]\n}")
    [finding] = check_paths([folder])
    assert (finding.line, finding.column, finding.rule) == (7, 29, "syntax")
    assert finding.message.startswith(f"failed to read text proto from {folder / 'config.pbtxt'}: ")
    assert finding.format().startswith(f"{folder / 'config.pbtxt'}:7: error: ")


def test_semantic_error_points_at_the_offending_field(make_model: MakeModel) -> None:
    io = 'input [\n  {\n    name: "INPUT0"\n    data_type: TYPE_FP32\n    dims: [ 4, 0 ]\n  }\n]'
    folder = make_model("m", WARM, io=io)
    [finding] = [f for f in check_paths([folder]) if f.severity is Severity.ERROR]
    assert finding.line == 8  # the header is 3 lines; `dims` is the 5th line of the input block
    assert "model input 'INPUT0' dimension must be integer >= 1" in finding.message


def test_paths_may_be_a_file_a_model_folder_or_a_repository(make_model: MakeModel) -> None:
    good = make_model("good", WARM)
    bad = make_model("bad", WARM, max_batch_size=-1)
    assert errors(good / "config.pbtxt") == errors(good) == []
    assert len(errors(bad)) == 1
    assert len(errors(good.parent)) == 1
    [missing] = check_paths([good.parent / "nowhere"])
    assert missing.rule == "path"


def test_repository_folder_without_config_is_an_error(make_model: MakeModel) -> None:
    good = make_model("good", WARM)
    (good.parent / "stray").mkdir()
    (good.parent / ".hidden").mkdir()
    assert rules(good.parent) >= {"config-missing"}
    assert len(errors(good.parent)) == 1


def test_folder_without_any_config_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    stray = tmp_path / "stray"
    (stray / ".git").mkdir(parents=True)
    (stray / "README.md").write_text("not a model")
    (stray / "notes").mkdir()
    for folder in (empty, stray):
        [finding] = check_paths([folder])
        assert (finding.rule, finding.severity) == ("path", Severity.ERROR)
        assert finding.message == (
            "no config.pbtxt in this folder or under it; expected a config.pbtxt file, a model folder that holds "
            "one, or a model repository whose model folders hold theirs"
        )
    assert main(["check-config", str(empty)]) == 1
    assert capsys.readouterr().out == f"{empty}: error: {check_paths([empty])[0].message} [path]\n"
    assert main(["check-config", str(tmp_path / "nowhere")]) == 1
    assert capsys.readouterr().out == (
        f"{tmp_path / 'nowhere'}: error: no such file or folder; expected a config.pbtxt file, a model folder or a "
        "model repository [path]\n"
    )


def test_model_folder_without_its_config_is_reported_as_triton_would(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    (folder / "1").mkdir(parents=True)
    [finding] = check_paths([folder])
    assert finding.rule == "config-missing"
    assert finding.message == f"failed to open text file for read {folder / 'config.pbtxt'}: No such file or directory"


def test_relative_paths_keep_the_model_name_and_print_as_given(
    make_model: MakeModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_model("m", WARM)
    make_model(
        "ens", f"ensemble_scheduling {{ step [{step_text('m', {'INPUT0': 'INPUT0'}, {'OUTPUT0': 'OUTPUT0'})}] }}",
        backend='platform: "ensemble"', model_py=False,
    )  # fmt: skip
    monkeypatch.chdir(folder)
    assert errors(Path("config.pbtxt")) == []  # the folder's name is the model's, even when "." is the folder
    monkeypatch.chdir(folder.parent.parent)
    # "ens" comes first and checks its step "m" on the way; m's findings still print under the path as given.
    assert {str(f.path) for f in check_paths([Path("repo")])} == {"repo/m/config.pbtxt"}


def test_gpu_rules_apply_only_when_the_target_gpu_count_is_known(make_model: MakeModel) -> None:
    folder = make_model("m", WARM + "\ninstance_group [{ kind: KIND_GPU gpus: [1] }]")
    assert errors(folder) == []
    assert errors(folder, Target(gpus=2)) == []
    [error] = errors(folder, Target(gpus=1))
    assert "specifies invalid or unsupported gpu id 1" in error


def test_backends_default_to_the_standard_container(make_model: MakeModel) -> None:
    folder = make_model("m", WARM, backend='backend: "onnxruntime"', model_py=False)
    assert errors(folder) == []
    [error] = errors(folder, Target(backends=frozenset({"python"})))
    assert "unable to find backend library for backend 'onnxruntime'" in error


def test_fields_newer_than_the_project_server_are_errors(make_model: MakeModel) -> None:
    metrics = make_model("metrics", WARM + "\nmodel_metrics { }")
    assert rules(metrics) >= {"schema-newer-than-server"}
    step = step_text("metrics", {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUTPUT0"})
    ensemble = make_model(
        "ens", f"ensemble_scheduling {{ max_inflight_requests: 2 step [{step}] }}", backend='platform: "ensemble"'
    )
    assert "schema-newer-than-server" in rules(ensemble)


def test_execution_env_relative_to_the_model_folder(make_model: MakeModel) -> None:
    param = 'parameters { key: "EXECUTION_ENV_PATH" value: { string_value: "$$TRITON_MODEL_DIRECTORY/env.tar.gz" } }'
    folder = make_model("m", WARM + "\n" + param)
    assert rules(folder) >= {"python-execution-env"}
    (folder / "env.tar.gz").write_bytes(b"")
    assert errors(folder) == []


def test_risky_but_legal_configs_warn_and_pass(make_model: MakeModel) -> None:
    folder = make_model("m")
    findings = check_paths([folder])
    assert {f.rule for f in findings} == {"no-warmup", "batching-without-scheduler"}
    assert {f.severity for f in findings} == {Severity.WARNING}
    assert exit_code(findings) == 0


def test_check_takes_under_50_ms_per_config(tmp_path: Path) -> None:
    for i in range(40):
        model(f"m{i}", "dynamic_batching { preferred_batch_size: [2] }\n" + WARM).write(tmp_path)
    check_paths([tmp_path / "m0"])  # warm the imports and caches of protobuf
    started = time.perf_counter()
    findings = check_paths([tmp_path])
    per_config = (time.perf_counter() - started) / 40
    assert exit_code(findings) == 0
    assert per_config < 0.050, f"{per_config * 1000:.1f} ms per config"


def test_cli_prints_findings_and_sets_the_exit_code(make_model: MakeModel, capsys: pytest.CaptureFixture[str]) -> None:
    good = make_model("good", WARM)
    assert main(["check-config", str(good)]) == 0
    capsys.readouterr()
    bad = make_model("bad", WARM, io=IO.replace("dims: [4]", "dims: [0]", 1))
    assert main(["check-config", str(good.parent), "--errors-only"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{bad / 'config.pbtxt'}:4: error: model input 'INPUT0' dimension must be integer >= 1, or -1 to indicate "
        "a variable-size dimension for bad [io-shape]"
    ]


def test_module_entry_point_runs(make_model: MakeModel) -> None:
    folder = make_model("m", max_batch_size=-1)
    result = subprocess.run(
        [sys.executable, "-m", "validation", "check-config", str(folder)],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert ": error: 'max_batch_size' must be non-negative value for m [max-batch-size]" in result.stdout
    assert ": warning: no model_warmup" in result.stdout


def test_a_vllm_model_with_a_unicode_digit_folder_is_checked_not_crashed_on(tmp_path: Path) -> None:
    """vLLM models list their versions by folder name: "²" passes str.isdigit() and int() then fails."""
    from validation.vllm_config import check_vllm_model

    folder = tmp_path / "repo" / "llm"
    (folder / "²").mkdir(parents=True)
    (folder / "config.pbtxt").write_text('name: "llm"\nbackend: "vllm"\n')

    findings = check_vllm_model(folder)

    assert f"{folder}: no version folder holds a model.json" in [f.message for f in findings]


def test_a_decoupled_config_needs_a_model_py_that_answers_through_its_response_sender(make_model: MakeModel) -> None:
    from tests.validation.cases import ECHO_MODEL_PY

    decoupled = WARM + "\nmodel_transaction_policy { decoupled: true }"
    streams = make_model("streams", decoupled)
    returns = make_model("returns", decoupled, model_py=False, files={"1/model.py": ECHO_MODEL_PY})

    assert "python-decoupled" not in rules(streams)
    [error] = errors(returns)
    assert "Python model 'returns_0' is using the decoupled mode and the execute function must return None" in error
    assert "never calls request.get_response_sender()" in error


def test_the_projects_own_package_passes_the_decoupled_rule(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from serving.triton.packaging import package
    from tests.serving.conftest import BACKEND, serving_params

    result = package(tiny_checkpoint, BACKEND, tmp_path, "qwen3-vl", serving_params())

    findings = check_paths([tmp_path / result.triton_model], Target(backends=frozenset({"python"})))
    assert [f.format() for f in findings if f.severity is Severity.ERROR] == []
