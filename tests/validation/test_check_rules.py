"""Rules the CPU-only Triton here cannot show: GPU ids, TensorRT profiles, crashes, request-time failures.

Each expected message is Triton 2.51's own wording (see docs/validation.md for where it comes from).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.validation.cases import IO, IO_TWO, WARMUP, MakeModel, ensemble, model, step
from validation.check import check_paths
from validation.context import Target
from validation.findings import Finding, Severity

WARM = WARMUP % (1, "INPUT0", "TYPE_FP32", "4", "zero_data: true")
TRT = 'platform: "tensorrt_plan"'
GPU_IDS = "GPUs with at least the minimum required CUDA compute compatibility of 6.000000 are:"


def errors(path: Path, target: Target | None = None) -> list[str]:
    return [f.message for f in check_paths([path], target) if f.severity is Severity.ERROR]


def findings(path: Path, rule: str, target: Target | None = None) -> list[Finding]:
    return [f for f in check_paths([path], target) if f.rule == rule]


def test_negative_gpu_id_is_an_error_whatever_the_gpu_count(make_model: MakeModel) -> None:
    folder = make_model("m", WARM + "\ninstance_group [{ kind: KIND_GPU gpus: [0, -1] }]")
    assert errors(folder) == [
        f"instance group m_0 of model m specifies invalid or unsupported gpu id -1. {GPU_IDS} (unknown without --gpus)"
    ]
    assert errors(folder, Target(gpus=2)) == [
        f"instance group m_0 of model m specifies invalid or unsupported gpu id -1. {GPU_IDS} 0, 1"
    ]


def test_negative_gpu_id_turns_kind_auto_into_cpu(make_model: MakeModel) -> None:
    folder = make_model("m", WARM + '\ninstance_group [{ name: "g" gpus: [-2] }]')
    assert errors(folder) == ["instance group g of model m has kind KIND_CPU but specifies one or more GPUs"]


def test_gpu_ids_beyond_the_target_are_errors_only_when_the_count_is_given(make_model: MakeModel) -> None:
    folder = make_model("m", WARM + "\ninstance_group [{ kind: KIND_GPU gpus: [0, 2] }]")
    assert errors(folder) == []
    assert errors(folder, Target(gpus=3)) == []
    [error] = errors(folder, Target(gpus=2))
    assert error == f"instance group m_0 of model m specifies invalid or unsupported gpu id 2. {GPU_IDS} 0, 1"
    [finding] = findings(folder, "instance-group", Target(gpus=2))
    assert finding.line == 7  # the `instance_group` line, after the 5-line header and the warmup


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ("-1", "instance group m_0 of model m and platform tensorrt_plan specifies invalid profile -1. The field "
         "should contain the string representation of a non-negative integer."),
        ("x1", "unable to parse 'x1': stoi"),
        ("", "profile name must not be empty"),
        ("99999999999", "unable to parse '99999999999': stoi is out of range (Triton 2.51 does not catch that error)"),
    ],
)  # fmt: skip
def test_tensorrt_profile_must_be_a_non_negative_integer(make_model: MakeModel, profile: str, message: str) -> None:
    folder = make_model("m", f'instance_group [{{ kind: KIND_CPU profile: ["{profile}"] }}]', backend=TRT)
    assert [f.message for f in findings(folder, "instance-group")] == [message]


def test_tensorrt_profile_reads_like_stoi(make_model: MakeModel) -> None:
    folder = make_model("m", 'instance_group [{ kind: KIND_CPU profile: ["0", " 2", "1abc", "+3"] }]', backend=TRT)
    assert findings(folder, "instance-group") == []


def test_tensorrt_non_linear_io_needs_three_dims(make_model: MakeModel) -> None:
    io = IO.replace("dims: [4] }]\noutput", "dims: [4] is_non_linear_format_io: true }]\noutput")
    folder = make_model("m", io=io, backend=TRT)
    assert [f.message for f in findings(folder, "io-shape")] == ["Non-linear IO format input requires 3 dims for m"]


def _growable(extra: str = "", same_buffer: bool = False) -> str:
    same = " use_same_buffer_for_input_output: true" if same_buffer else ""
    return (
        'sequence_batching { state [{ input_name: "S" output_name: "O" data_type: TYPE_FP32 dims: [4] '
        f"use_growable_memory: true{same} }}] }}\n{extra}"
    )


def test_growable_state_needs_a_single_buffer_and_gpu_instances(make_model: MakeModel) -> None:
    single = "In order to 'use_growable_memory', you must also enable 'use_single_buffer' for state input name 'S'"
    gpu_only = "'use_growable_memory' can only work with KIND_GPU model instances right now."
    # Without a GPU count, KIND_AUTO may well become KIND_GPU: only the buffer rule is certain.
    [error] = errors(make_model("auto", _growable()))
    assert error.startswith(single) and error.endswith("(Triton 2.51 loads the model, then fails its first sequence)")
    both = errors(make_model("cpu", _growable("instance_group [{ kind: KIND_CPU }]")))
    assert len(both) == 2 and both[0].startswith(single) and both[1].startswith(gpu_only)
    on_cpu_machine = errors(make_model("none", _growable(same_buffer=True)), Target(gpus=0))
    assert len(on_cpu_machine) == 1 and on_cpu_machine[0].startswith(gpu_only)
    assert errors(make_model("gpu", _growable(same_buffer=True)), Target(gpus=1)) == []


def test_version_folders_that_are_not_numbers_are_skipped_with_a_warning(make_model: MakeModel) -> None:
    folder = make_model("m", WARM + "\nversion_policy { all {} }", versions=("1", "abc", "configs", "warmup"))
    [warning] = findings(folder, "version-folder")
    assert warning.severity is Severity.WARNING
    assert warning.message == "ignore version directory 'abc' which fails to convert to integral number"


def test_version_folder_beyond_int64_is_an_error(make_model: MakeModel) -> None:
    folder = make_model("m", WARM + "\nversion_policy { all {} }", versions=("1", "99999999999999999999"))
    [error] = errors(folder)
    assert error.startswith("version directory '99999999999999999999' is out of range for a 64-bit version number")


def test_python_model_file_is_looked_up_under_the_unsigned_version(make_model: MakeModel) -> None:
    # Folder "-4" is version -4, which the Python backend turns into folder 18446744073709551612.
    folder = make_model("m", WARM + "\nversion_policy { all {} }", versions=("-4",))
    [error] = errors(folder)
    assert f"Python model file not found in '{folder / '18446744073709551612' / 'model.py'}'" in error


def test_batch_strategy_path_must_exist(make_model: MakeModel, tmp_path: Path) -> None:
    def strategy(name: str, path: str) -> Path:
        param = f'parameters {{ key: "TRITON_BATCH_STRATEGY_PATH" value: {{ string_value: "{path}" }} }}'
        return make_model(name, f"{WARM}\ndynamic_batching {{}}\n{param}")

    library = tmp_path / "libbatch.so"
    library.write_bytes(b"")
    assert findings(strategy("present", str(library)), "batch-strategy") == []
    assert errors(strategy("empty", "")) == ["Batching library path not found: "]
    [relative] = findings(strategy("relative", "libbatch.so"), "batch-strategy")
    assert relative.severity is Severity.WARNING
    assert "is relative: Triton 2.51 looks for it from the server's working directory" in relative.message


def test_ensemble_leading_into_a_foreign_cycle_is_an_error(make_model: MakeModel) -> None:
    def ens(name: str, to: str) -> Path:
        return ensemble(name, [step(to, {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUTPUT0"})]).write(repository)

    repository = make_model("echo", WARM).parent
    outer, _, _ = ens("a", "b"), ens("b", "c"), ens("c", "b")
    assert errors(outer) == [
        "ensemble a leads into the circular dependency b -> ... -> c -> b, which it is not part of: Triton 2.51's "
        "circular dependency check then recurses without end and the server crashes"
    ]
    assert errors(repository / "b") == ["circular dependency between ensembles: b -> ... -> c -> b"]


def test_decoupled_outputs_may_fan_out_and_meet_again(make_model: MakeModel) -> None:
    repository = make_model("two", io=IO_TWO).parent
    # Both outputs of one decoupled step carry its label, so a step may take both of them.
    two_outputs = IO + '\noutput [{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [4] }]'
    model("split", "model_transaction_policy { decoupled: true }", io=two_outputs).write(repository)
    fine = ensemble(
        "fine",
        [
            step("split", {"INPUT0": "INPUT0"}, {"OUTPUT0": "a", "OUTPUT1": "b"}),
            step("two", {"INPUT0": "a", "INPUT1": "b"}, {"OUTPUT0": "OUTPUT0"}),
        ],
    ).write(repository)
    assert errors(fine) == []
    # Two decoupled steps give their outputs different labels: a step that takes both is refused.
    mixed = ensemble(
        "mixed",
        [
            step("split", {"INPUT0": "INPUT0"}, {"OUTPUT0": "a", "OUTPUT1": "unused"}),
            step("split", {"INPUT0": "INPUT0"}, {"OUTPUT0": "b", "OUTPUT1": "spare"}),
            step("two", {"INPUT0": "a", "INPUT1": "b"}, {"OUTPUT0": "OUTPUT0"}),
        ],
    ).write(repository)
    # The joining step writes an ensemble output, and Triton names that tensor's node after the ensemble.
    assert "in ensemble mixed, step of model 'mixed' receives inputs originated from different decoupled models" in (
        errors(mixed)
    )


def test_step_model_that_fails_only_on_the_target_fails_the_ensemble(make_model: MakeModel) -> None:
    repository = make_model("gpu", WARM + "\ninstance_group [{ kind: KIND_GPU }]").parent
    ens = ensemble("ens", [step("gpu", {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUTPUT0"})]).write(repository)
    assert errors(ens) == []
    assert errors(ens, Target(gpus=0)) == [
        "ensemble 'ens' depends on 'gpu' which has no loaded version. Model 'gpu' loading failed with error: "
        "instance group gpu_0 of model gpu has kind KIND_GPU but no GPUs are available"
    ]


@pytest.mark.parametrize(
    "runtime",
    ["../../../usr/lib/x86_64-linux-gnu/libc.so.6", "../onnxruntime/libtriton_onnxruntime.so", "../../evil.so"],
)
def test_a_runtime_that_climbs_out_of_the_backend_directory_is_refused(make_model: MakeModel, runtime: str) -> None:
    """Triton refuses these too: "escapes backend directory" where the file exists on the server,
    "unable to find" where it does not; offline the checker cannot know which, and refuses both."""
    folder = make_model("m", f'runtime: "{runtime}"')
    [finding] = findings(folder, "runtime")
    assert finding.severity is Severity.ERROR
    assert finding.message == (
        f"backend library name '{runtime}' escapes backend directory '<backends>/python', for model 'm', "
        "check model config runtime field"
    )
    assert finding.line == 6  # the `runtime` line, after the 5-line header


def test_a_runtime_is_found_in_the_models_own_folders_first(make_model: MakeModel) -> None:
    """A custom backend shipped with the model: Triton loads it from the version or model folder."""
    in_version = make_model("v", 'runtime: "libcustom.so"', files={"1/libcustom.so": "a library"})
    in_model = make_model("m", 'runtime: "libcustom.so"', files={"libcustom.so": "a library"})
    elsewhere = make_model("x", 'runtime: "libcustom.so"')
    assert findings(in_version, "runtime") == [] and findings(in_model, "runtime") == []
    [missing] = findings(elsewhere, "runtime")
    assert missing.message.startswith("unable to find backend library 'libcustom.so' for model 'x', searched: ")
    assert missing.message.endswith("'<backends>/python' (the python backend's own library is libtriton_python.so)")


def test_a_runtime_for_a_backend_the_target_lacks_is_refused(make_model: MakeModel) -> None:
    folder = make_model("m", 'runtime: "libtriton_onnxruntime.so"', backend='backend: "onnxruntime"')
    [finding] = findings(folder, "runtime", Target(backends=frozenset({"python"})))
    assert finding.message.endswith("(the target server has no onnxruntime backend)")
    assert findings(folder, "backend-unknown", Target(backends=frozenset({"python"}))) == []  # said once, here
    assert findings(folder, "runtime") == []  # the standard container has it


def test_model_py_as_runtime_needs_a_python_based_backend(make_model: MakeModel) -> None:
    vllm = make_model("v", 'runtime: "model.py"', backend='backend: "vllm"')
    python = make_model("p", 'runtime: "model.py"')
    assert findings(vllm, "runtime") == []
    [finding] = findings(python, "runtime")
    assert "searched: '<backends>/python/model.py' (the python backend is not Python-based)" in finding.message


def test_version_folders_with_unicode_digits_are_not_versions(make_model: MakeModel) -> None:
    """Python reads "٣" as 3 (str.isdigit, int, regex \\d); Triton's std::stoll does not: no version 3."""
    folder = make_model("m", "version_policy { all {} }", versions=("1", "٣", "²"))
    assert errors(folder) == []
    assert sorted(f.message for f in findings(folder, "version-folder")) == [
        "ignore version directory '²' which fails to convert to integral number",
        "ignore version directory '٣' which fails to convert to integral number",
    ]


def test_a_cycle_through_a_model_that_names_itself_otherwise_is_found(tmp_path: Path) -> None:
    """Found by the fuzzer: an ensemble step leading to an ensemble whose config calls itself by
    another name than its folder, and steps to itself, made the cycle walk recurse without end."""
    repository = tmp_path / "repo"
    ensemble("ens_a", [step("ens_c", {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUTPUT0"})]).write(repository)
    ensemble("ens_c", [step("ens_b", {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUTPUT0"})]).write(repository)
    loop = ensemble("ens_b", [step("ens_b", {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUTPUT0"})]).write(repository)
    config = loop / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "ens_b"', 'name: "renamed"', 1))

    messages = errors(repository / "ens_a")

    assert messages, "an ensemble leading to a broken one must not pass"
