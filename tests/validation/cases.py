"""Model folders for the checker tests, each with what the real Triton 2.51 says about it.

``phrase`` is a piece of Triton's own load error (seen in its HTTP answer or log); the checker must
say it too. ``triton`` is what the server does: "fail", "ready", or "hang" (2.51 may never answer;
when it does, it refuses the model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

#: The ``make_model`` fixture: ``make_model(name, body, **model_kwargs)`` -> the model folder.
MakeModel = Callable[..., Path]

ECHO_MODEL_PY = """import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", tensor.as_numpy())]))
        return responses
"""
#: The same echo for a decoupled config: Triton wants its responses through the response sender.
DECOUPLED_ECHO_MODEL_PY = """import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            response = pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", tensor.as_numpy())])
            request.get_response_sender().send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""
PYTHON = 'backend: "python"'
ENSEMBLE = 'platform: "ensemble"'
IO = """input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [4] }]"""
IO_VAR = """input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [-1] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [-1] }]"""
IO_TWO = """input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [4] }, { name: "INPUT1" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [4] }]"""
WARMUP = 'model_warmup [{ name: "w" batch_size: %d inputs { key: "%s" value: { data_type: %s dims: [%s] %s } } }]'


@dataclass(frozen=True)
class Case:
    name: str
    config: str | None
    phrase: str | None = None
    triton: Literal["fail", "ready", "hang"] = "ready"
    versions: tuple[str, ...] = ("1",)
    model_py: bool = True
    files: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def write(self, repository: Path) -> Path:
        folder = repository / self.name
        folder.mkdir(parents=True, exist_ok=True)
        if self.config is not None:
            (folder / "config.pbtxt").write_text(self.config)
        for version in self.versions:
            (folder / version).mkdir(exist_ok=True)
            if self.model_py:
                decoupled = "decoupled: true" in (self.config or "")
                (folder / version / "model.py").write_text(DECOUPLED_ECHO_MODEL_PY if decoupled else ECHO_MODEL_PY)
        for relative, text in self.files.items():
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (folder / relative).write_text(text)
        return folder


def model(
    name: str,
    body: str = "",
    *,
    phrase: str | None = None,
    triton: Literal["fail", "ready", "hang"] | None = None,
    io: str = IO,
    max_batch_size: int | None = 4,
    backend: str = PYTHON,
    named: bool = True,
    **kwargs: object,
) -> Case:
    """A case whose config is the usual header (name, backend, batch size, tensors) plus ``body``."""
    lines = [f'name: "{name}"' if named else "", backend]
    if max_batch_size is not None:
        lines.append(f"max_batch_size: {max_batch_size}")
    text = "\n".join(line for line in [*lines, io, body] if line) + "\n"
    expected = triton or ("fail" if phrase else "ready")
    return Case(name, text, phrase, expected, **kwargs)  # type: ignore[arg-type]


def ensemble(name: str, steps: list[str], *, phrase: str | None = None, **kwargs: object) -> Case:
    body = f"ensemble_scheduling {{ step [ {', '.join(steps)} ] }}"
    extra = str(kwargs.pop("extra", ""))
    return model(name, body + "\n" + extra, phrase=phrase, backend=ENSEMBLE, model_py=False, **kwargs)  # type: ignore[arg-type]


def step(model_name: str, inputs: dict[str, str], outputs: dict[str, str], version: int = -1) -> str:
    maps = [f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items()]
    maps += [f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items()]
    return f'{{ model_name: "{model_name}" model_version: {version} {" ".join(maps)} }}'


def _seq(controls: str) -> str:
    return f"sequence_batching {{ control_input [{controls}] }}"


def _control(tensor: str, kind: str, values: str) -> str:
    return f'{{ name: "{tensor}" control [{{ kind: {kind} {values} }}] }}'


def _state(initial: str) -> str:
    """One implicit state S_IN/S_OUT (FP32 [4]) with the given ``initial_state`` entries."""
    return (
        'sequence_batching { state [{ input_name: "S_IN" output_name: "S_OUT" data_type: TYPE_FP32 dims: [4] '
        f"initial_state [{initial}] }}] }}"
    )


def _initial(data_type: str = "TYPE_FP32", dims: str = "4", data: str = "zero_data: true", name: str = "i") -> str:
    named = f'name: "{name}" ' if name else ""
    return f"{{ {named}data_type: {data_type} dims: [{dims}] {data} }}"


def _strategy(path: str) -> str:
    return f'parameters {{ key: "TRITON_BATCH_STRATEGY_PATH" value: {{ string_value: "{path}" }} }}'


START, END, READY, CORRID = (f"CONTROL_SEQUENCE_{k}" for k in ("START", "END", "READY", "CORRID"))
ECHO = step("echo", {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUTPUT0"})
WARM_OK = WARMUP % (1, "INPUT0", "TYPE_FP32", "4", "zero_data: true")
IO_OUT2 = IO + '\noutput [{ name: "OUT2" data_type: TYPE_FP32 dims: [4] }]'

# Composing models the ensemble cases refer to; loaded by Triton as dependencies, not tested alone.
HELPERS = [
    model("echo", WARM_OK),
    model("echo2in", io=IO_TWO),
    ensemble("ens_cycle_b", [step("ens_cycle_a", {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUTPUT0"})]),
    model("echo_decoupled", "model_transaction_policy { decoupled: true }"),
    model("echo_two_outputs", WARM_OK, io=IO + '\noutput [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [4] }]'),
    # Each fails alone, and so fails the ensemble that uses it: at load, at poll, for want of a version.
    model("step_gpu_only", WARM_OK + "\ninstance_group [{ kind: KIND_GPU }]"),
    model("step_bad_dims", WARM_OK, io=IO.replace("dims: [4]", "dims: [0]", 1)),
    model("step_no_version", WARM_OK, versions=()),
    ensemble("ens_inner_missing", [step("nope", {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUTPUT0"})]),
]

CASES = [
    # Valid, maybe risky: Triton loads them; the checker has no error (and may warn).
    model("ok", "dynamic_batching { preferred_batch_size: [2, 4] }\n" + WARM_OK),
    model("dyn_without_batching", "dynamic_batching {}", max_batch_size=0, warnings=("dynamic-batching",)),
    model("batching_without_scheduler", warnings=("batching-without-scheduler", "no-warmup")),
    model("specific_partly_present", "version_policy { specific { versions: [1, 3] } }", warnings=("version-policy",)),
    model("config_without_name", named=False),
    model(
        "reshape_variable_ok",
        io='input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [2, 4, -1, 6] reshape { shape: [8, -1, 1, 6] } }]\n'
        'output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [-1] }]',
    ),
    model(
        "duplicate_input",
        warnings=("io-duplicate-name",),
        io=IO.replace(
            "dims: [4] }]\noutput", 'dims: [4] }, { name: "INPUT0" data_type: TYPE_FP32 dims: [4] }]\noutput'
        ),
    ),
    model("policy_without_levels", "dynamic_batching { priority_queue_policy { key: 1 value { max_queue_size: 4 } } }"),
    model("instance_count_zero", "instance_group [{ kind: KIND_CPU count: 0 }]"),
    model("instance_kind_model", "instance_group [{ kind: KIND_MODEL }]"),
    model(
        "odd_version_folders",
        "version_policy { all {} }",
        versions=("1", "2", "01", "abc"),
        warnings=("version-folder",),
    ),
    model(
        "sequence_ok",
        _seq(
            f"{_control('START', START, 'int32_false_true: [0, 1]')}, "
            f"{_control('CORR', CORRID, 'data_type: TYPE_UINT64')}"
        ),
    ),
    model("sequence_without_batching", "sequence_batching {}", max_batch_size=0),
    model(
        "control_two_kinds_one_tensor",
        'sequence_batching { control_input [{ name: "A" control [{ kind: CONTROL_SEQUENCE_START '
        "int32_false_true: [0, 1] }, { kind: CONTROL_SEQUENCE_END int32_false_true: [0, 1] }] }] }",
    ),
    model(
        "batch_input_ok",
        'batch_input [{ kind: BATCH_ELEMENT_COUNT target_name: "BI" data_type: TYPE_INT32 source_input: "INPUT0" }]',
    ),
    model(
        "batch_output_ok",
        'batch_output [{ kind: BATCH_SCATTER_WITH_INPUT_SHAPE target_name: "OUTPUT0" source_input: "INPUT0" }]',
    ),
    model("warmup_variable_given", WARMUP % (1, "INPUT0", "TYPE_FP32", "7", "random_data: true"), io=IO_VAR),
    model("warmup_batch_zero", WARMUP % (0, "NOPE", "TYPE_FP32", "4", "zero_data: true")),
    model("warmup_not_batching", WARMUP % (1, "INPUT0", "TYPE_FP32", "4", "zero_data: true"), max_batch_size=0),
    model(
        "warmup_extra_input",
        'model_warmup [{ name: "w" batch_size: 1 inputs [{ key: "INPUT0" value: { '
        'data_type: TYPE_FP32 dims: [4] zero_data: true } }, { key: "NOPE" value: { data_type: TYPE_FP32 '
        "dims: [4] zero_data: true } }] }]",
        warnings=("warmup-inputs",),
    ),
    model("warmup_optional_left_out", WARM_OK, io=IO_TWO.replace("dims: [4] }]", "dims: [4] optional: true }]", 1)),
    model("backend_from_model_py", backend=""),
    model("python_with_onnx_platform", backend='backend: "python"\nplatform: "onnxruntime_onnx"'),
    ensemble("ens_ok", [ECHO]),
    ensemble(
        "ens_chain",
        [
            step("echo", {"INPUT0": "INPUT0"}, {"OUTPUT0": "mid"}),
            step("echo", {"INPUT0": "mid"}, {"OUTPUT0": "OUTPUT0"}),
        ],
    ),
    ensemble("ens_not_batching", [ECHO], max_batch_size=0, io=IO.replace("dims: [4]", "dims: [-1, 4]")),
    model("state_initial_ok", _state(_initial())),
    model("version_not_a_number", "version_policy { all {} }", versions=("1", "abc"), warnings=("version-folder",)),
    model("version_folder_configs_skipped", versions=("1", "configs")),
    # "٣" is a digit to Python (str.isdigit, \d, int) and not to Triton's std::stoll: no version 3 here.
    model("version_unicode_digit", "version_policy { all {} }", versions=("1", "٣"), warnings=("version-folder",)),
    # runtime: the backend's own library, however it is spelled, loads.
    model("runtime_own_library", 'runtime: "libtriton_python.so"'),
    model("runtime_own_library_spelled_around", 'runtime: "../python/libtriton_python.so"'),
    # A decoupled step may feed later steps, as long as no step mixes its outputs with others.
    ensemble(
        "ens_decoupled_chain",
        [
            step("echo_decoupled", {"INPUT0": "INPUT0"}, {"OUTPUT0": "mid"}),
            step("echo", {"INPUT0": "mid"}, {"OUTPUT0": "OUTPUT0"}),
        ],
    ),
    # Refused by Triton; the checker says why in Triton's words.
    Case("name_folder", model("other").config, "directory name must equal model name", "fail"),
    model("no_backend", phrase="Could not determine backend for model 'no_backend'", backend="", model_py=False),
    model("unknown_backend", phrase="unable to find backend library for backend 'pythn'", backend='backend: "pythn"'),
    model("unknown_platform", phrase="unexpected platform type 'foo'", backend='platform: "foo"'),
    model(
        "platform_pair",
        phrase="unexpected 'platform' and 'backend' pair, got:tensorrt_plan, onnxruntime",
        backend='backend: "onnxruntime"\nplatform: "tensorrt_plan"',
    ),
    model("negative_batch", phrase="'max_batch_size' must be non-negative value", max_batch_size=-1),
    model(
        "dim_zero",
        phrase="model input 'INPUT0' dimension must be integer >= 1, or -1",
        io=IO.replace("dims: [4] }]\noutput", "dims: [0] }]\noutput"),
    ),
    model(
        "dim_minus_two",
        phrase="model output 'OUTPUT0' dimension must be integer >= 1",
        io=IO.replace('"OUTPUT0" data_type: TYPE_FP32 dims: [4]', '"OUTPUT0" data_type: TYPE_FP32 dims: [-2]'),
    ),
    model(
        "no_dims",
        phrase="model input 'INPUT0' must specify 'dims'",
        io=IO.replace(" dims: [4] }]\noutput", " }]\noutput"),
    ),
    model(
        "no_data_type",
        phrase="model input 'INPUT0' must specify 'data_type'",
        io=IO.replace("data_type: TYPE_FP32 dims: [4] }]\noutput", "dims: [4] }]\noutput"),
    ),
    model("no_tensor_name", phrase="model input must specify 'name'", io=IO.replace('name: "INPUT0" ', "")),
    model(
        "reshape_size",
        phrase="has different size for dims and reshape",
        io=IO.replace("dims: [4] }]\noutput", "dims: [4] reshape { shape: [2, 3] } }]\noutput"),
    ),
    model(
        "reshape_variable",
        phrase="has different number of variable-size dimensions for dims and reshape",
        io=IO.replace("dims: [4] }]\noutput", "dims: [2, -1] reshape { shape: [-1, 2, -1] } }]\noutput"),
    ),
    model(
        "reshape_empty",
        phrase="cannot have empty reshape for non-batching model",
        max_batch_size=0,
        io=IO.replace("dims: [4] }]\noutput", "dims: [1] reshape { shape: [] } }]\noutput"),
    ),
    model(
        "reshape_zero",
        phrase="reshape dimensions must be integer >= 1",
        io=IO.replace("dims: [4] }]\noutput", "dims: [4] reshape { shape: [0] } }]\noutput"),
    ),
    model(
        "nhwc",
        phrase="model input NHWC/NCHW require 3 dims",
        io=IO.replace("dims: [4] }]\noutput", "format: FORMAT_NHWC dims: [4] }]\noutput"),
    ),
    model(
        "shape_tensor",
        phrase="shape tensors are only supported for TensorRT platform",
        io=IO.replace("dims: [4] }]\noutput", "dims: [4] is_shape_tensor: true }]\noutput"),
    ),
    model(
        "non_linear_io",
        phrase="Non-linear IO format is only supported for the TensorRT platform for non_linear_io",
        io=IO.replace("dims: [4] }]\noutput", "dims: [4] is_non_linear_format_io: true }]\noutput"),
    ),
    model(
        "preferred_too_big",
        "dynamic_batching { preferred_batch_size: [8] }",
        phrase="dynamic batching preferred size must be <= max batch size",
    ),
    model(
        "preferred_zero",
        "dynamic_batching { preferred_batch_size: [0] }",
        phrase="dynamic batching preferred size must be positive",
    ),
    model(
        "preferred_not_batching",
        "dynamic_batching { preferred_batch_size: [2] }",
        max_batch_size=0,
        phrase="dynamic batching preferred size must be <= max batch size",
    ),
    model(
        "default_priority_unset",
        "dynamic_batching { priority_levels: 2 }",
        phrase="default priority level must be in range [1, 2]",
    ),
    model(
        "default_priority_high",
        "dynamic_batching { priority_levels: 2 default_priority_level: 3 }",
        phrase="default priority level must be in range [1, 2]",
    ),
    model(
        "queue_policy_level",
        "dynamic_batching { priority_levels: 2 default_priority_level: 1 "
        "priority_queue_policy { key: 3 value { max_queue_size: 4 } } }",
        phrase="priority queue policy must have priority level in range [1, 2]",
    ),
    model(
        "preserve_ordering_levels",
        "dynamic_batching { preserve_ordering: true priority_levels: 2 default_priority_level: 1 }",
        phrase="Only one priority level is allowed when 'preserve_ordering' is true",
    ),
    model(
        "preserve_ordering_delay",
        "dynamic_batching { preserve_ordering: true default_queue_policy { "
        "timeout_action: DELAY default_timeout_microseconds: 100 } }",
        phrase="Queue policy can not have DELAY as timeout action",
    ),
    model(
        "gpu_kind_without_gpus",
        "instance_group [{ kind: KIND_GPU }]",
        phrase="has kind KIND_GPU but no GPUs are available",
    ),
    model(
        "gpu_id_missing",
        "instance_group [{ kind: KIND_GPU gpus: [0] }]",
        phrase="specifies invalid or unsupported gpu id 0",
    ),
    model(
        "cpu_kind_with_gpus",
        "instance_group [{ kind: KIND_CPU gpus: [0] }]",
        phrase="has kind KIND_CPU but specifies one or more GPUs",
    ),
    model(
        "model_kind_with_gpus",
        "instance_group [{ kind: KIND_MODEL gpus: [0] }]",
        phrase="has kind KIND_MODEL but specifies one or more GPUs",
    ),
    model(
        "auto_kind_missing_gpu",
        "instance_group [{ gpus: [3] }]",
        phrase="has kind KIND_CPU but specifies one or more GPUs",
    ),
    model(
        "profile_not_tensorrt",
        'instance_group [{ kind: KIND_CPU profile: ["0"] }]',
        phrase="specifies profile field which is only supported for TensorRT models",
    ),
    model(
        "latest_zero",
        "version_policy { latest { num_versions: 0 } }",
        phrase="at least one version must be available under the version policy of model 'latest_zero'",
    ),
    model(
        "specific_absent",
        "version_policy { specific { versions: [3] } }",
        phrase="at least one version must be available under the version policy",
    ),
    model(
        "leading_zero_only", phrase="at least one version must be available under the version policy", versions=("01",)
    ),
    model("no_version_folder", phrase="at least one version must be available under the version policy", versions=()),
    # A decoupled config over a model.py that returns its responses: the warmup's request fails the load
    # (or, on some runs, kills the server).
    model(
        "decoupled_returns",
        "model_transaction_policy { decoupled: true }\n" + WARMUP % (1, "INPUT0", "TYPE_FP32", "4", "zero_data: true"),
        phrase="is using the decoupled mode and the execute function must return None",
        model_py=False,
        files={"1/model.py": ECHO_MODEL_PY},
    ),
    model(
        "cache_decoupled",
        "response_cache { enable: true }\nmodel_transaction_policy { decoupled: true }",
        phrase="with 'decoupled' transaction policy. Please disable the response cache.",
    ),
    model(
        "cache_sequence",
        "sequence_batching {}\nresponse_cache { enable: true }",
        phrase="with sequence batching scheduler. Please disable the response cache.",
    ),
    model(
        "control_no_name",
        "sequence_batching { control_input [{ control [{ kind: CONTROL_SEQUENCE_START int32_false_true: [0, 1] }] }] }",
        phrase="sequence batching control tensor must have a name",
    ),
    model(
        "control_tensor_twice",
        _seq(f"{_control('A', START, 'int32_false_true: [0, 1]')}, {_control('A', END, 'int32_false_true: [0, 1]')}"),
        phrase="control tensor 'A' is specified for multiple control kinds",
    ),
    model(
        "control_kind_twice",
        _seq(f"{_control('A', START, 'int32_false_true: [0, 1]')}, {_control('B', START, 'int32_false_true: [0, 1]')}"),
        phrase="sequence batching specifies multiple CONTROL_SEQUENCE_START tensors",
    ),
    model(
        "control_no_values",
        _seq(_control("A", READY, "")),
        phrase="must specify either 'int32_false_true', 'fp32_false_true' or 'bool_false_true' for CONTROL_SEQUENCE_R",
    ),
    model(
        "control_two_types",
        _seq(_control("A", END, "int32_false_true: [0, 1] fp32_false_true: [0, 1]")),
        phrase="specifies more than one from 'int32_false_true', 'fp32_false_true' and 'bool_false_true'",
    ),
    model(
        "control_three_values",
        _seq(_control("A", END, "bool_false_true: [false, true, true]")),
        phrase="control 'bool_false_true' must have exactly 2 entries for CONTROL_SEQUENCE_END",
    ),
    model(
        "corrid_values",
        _seq(_control("A", CORRID, "int32_false_true: [0, 1]")),
        phrase="must not specify either 'int32_false_true', 'fp32_false_true' or 'bool_false_true' for CONTROL_S",
    ),
    model(
        "corrid_type",
        _seq(_control("A", CORRID, "data_type: TYPE_FP32")),
        phrase="unexpected data type for control CONTROL_SEQUENCE_CORRID",
    ),
    model(
        "oldest_preferred",
        "sequence_batching { oldest { preferred_batch_size: [8] } }",
        phrase="sequence batching preferred batch size must be <= max batch size",
    ),
    model(
        "direct_utilization",
        "sequence_batching { direct { minimum_slot_utilization: 1.5 } }",
        phrase="minimum slot utilization must be in range (0.0, 1.0]",
    ),
    model(
        "batch_input_no_source",
        'batch_input [{ kind: BATCH_ELEMENT_COUNT target_name: "BI" data_type: TYPE_INT32 }]',
        phrase="batch input kind 'BATCH_ELEMENT_COUNT' expects 1 source input, got 0",
    ),
    model(
        "batch_input_type",
        'batch_input [{ kind: BATCH_ELEMENT_COUNT target_name: "BI" data_type: TYPE_FP16 source_input: "INPUT0" }]',
        phrase="batch input data type must be TYPE_INT32 or TYPE_FP32",
    ),
    model(
        "batch_input_source",
        'batch_input [{ kind: BATCH_ELEMENT_COUNT target_name: "BI" data_type: TYPE_INT32 source_input: "NOPE" }]',
        phrase="unknown source input name 'NOPE'",
    ),
    model(
        "batch_output_target",
        'batch_output [{ kind: BATCH_SCATTER_WITH_INPUT_SHAPE target_name: "NOPE" source_input: "INPUT0" }]',
        phrase="unknown target output name 'NOPE'",
    ),
    model(
        "batch_output_target_twice",
        "batch_output [{ kind: BATCH_SCATTER_WITH_INPUT_SHAPE target_name: "
        '["OUTPUT0", "OUTPUT0"] source_input: "INPUT0" }]',
        phrase="target output name 'OUTPUT0' can only be specified once",
    ),
    model(
        "batch_output_sources",
        'batch_output [{ kind: BATCH_SCATTER_WITH_INPUT_SHAPE target_name: "OUTPUT0" '
        'source_input: ["INPUT0", "INPUT0"] }]',
        phrase="expects 1 source input, got 2",
    ),
    model(
        "warmup_unknown_input",
        WARMUP % (1, "NOPE", "TYPE_FP32", "4", "zero_data: true"),
        phrase="missing required input(s) ['INPUT0']",
    ),
    model(
        "warmup_type",
        WARMUP % (1, "INPUT0", "TYPE_FP16", "4", "zero_data: true"),
        phrase="inference input 'INPUT0' data-type is 'FP16', but model 'warmup_type' expects 'FP32'",
    ),
    model(
        "warmup_shape",
        WARMUP % (1, "INPUT0", "TYPE_FP32", "5", "zero_data: true"),
        phrase="unexpected shape for input 'INPUT0' for model 'warmup_shape'. Expected [-1,4], got [1,5]",
    ),
    model(
        "warmup_variable",
        WARMUP % (1, "INPUT0", "TYPE_FP32", "-1", "zero_data: true"),
        io=IO_VAR,
        phrase="warmup setting expects all variable-size dimensions are specified for input 'INPUT0'",
    ),
    model(
        "warmup_no_data",
        WARMUP % (1, "INPUT0", "TYPE_FP32", "4", ""),
        phrase="warmup setting expects input 'INPUT0' to have input_data_type set",
    ),
    model(
        "warmup_file",
        WARMUP % (1, "INPUT0", "TYPE_FP32", "4", 'input_data_file: "nope.bin"'),
        phrase="failed to open text file for read",
    ),
    model(
        "warmup_missing_input",
        WARM_OK,
        io=IO_TWO,
        phrase="expected 2 inputs but got 1 inputs for model 'warmup_missing_input'",
    ),
    model(
        "execution_env",
        'parameters { key: "EXECUTION_ENV_PATH" value: { string_value: "$$TRITON_MODEL_DIRECTORY/env.tar.gz" } }',
        phrase="Failed to get the canonical path for",
    ),
    model("unknown_field", "foo: 3", phrase="read text proto"),
    model("two_schedulers", "dynamic_batching {}\nsequence_batching {}", phrase="read text proto"),
    model("syntax", "max_batch_size: [", phrase="read text proto"),
    model(
        "metrics_field",
        "model_metrics { metric_control [{ histogram_options { buckets: [1.0] } }] }",
        phrase="read text proto",
    ),
    Case("no_config", None, "failed to open text file for read", "fail"),
    # runtime names the shared library Triton loads: one that climbs out of its folder is refused
    # (a way to load any library on the machine), and so is one the named backend does not have.
    model(
        "runtime_escapes",
        'runtime: "../evil.so"',
        files={"evil.so": "not a library"},
        phrase="backend library name '../evil.so' escapes backend directory",
    ),
    model(
        "runtime_escapes_from_the_model_folder",
        'runtime: "1/../../runtime_escapes/evil.so"',
        phrase="backend library name '1/../../runtime_escapes/evil.so' escapes backend directory",
    ),
    model(
        "runtime_of_another_backend",
        'runtime: "libtriton_onnxruntime.so"',
        phrase="unable to find backend library 'libtriton_onnxruntime.so' for model 'runtime_of_another_backend'",
    ),
    model(
        "runtime_python_based",
        'runtime: "model.py"',
        phrase="unable to find Python backend based backend library 'model.py' for model 'runtime_python_based'",
    ),
    model(
        "label_file_missing",
        io=IO.replace(
            '"OUTPUT0" data_type: TYPE_FP32 dims: [4]',
            '"OUTPUT0" data_type: TYPE_FP32 dims: [4] label_filename: "labels.txt"',
        ),
        phrase="labels.txt: No such file or directory",
    ),
    ensemble(
        "ens_missing_model",
        [step("nope", {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUTPUT0"})],
        phrase="contains models that are not available or ambiguous: nope",
    ),
    ensemble(
        "ens_cycle_a",
        [step("ens_cycle_b", {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUTPUT0"})],
        phrase="circular dependency between ensembles: ens_cycle_a -> ... -> ens_cycle_b -> ens_cycle_a",
    ),
    ensemble(
        "ens_self",
        [step("ens_self", {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUTPUT0"})],
        phrase="circular dependency between ensembles: ens_self",
    ),
    ensemble(
        "ens_unused_input",
        [ECHO],
        io=IO_TWO,
        phrase="ensemble input 'INPUT1' for ensemble ens_unused_input' is not used",
    ),
    ensemble(
        "ens_unused_output",
        [ECHO],
        io=IO + '\noutput [{ name: "OUT2" data_type: TYPE_FP32 dims: [4] }]',
        phrase="ensemble output 'OUT2' for ensemble ens_unused_output' is not used",
    ),
    ensemble(
        "ens_unused_tensor",
        [ECHO, step("echo", {"INPUT0": "INPUT0"}, {"OUTPUT0": "spare"})],
        phrase="ensemble tensor 'spare' is unused in ensemble 'ens_unused_tensor'",
    ),
    ensemble(
        "ens_output_twice", [ECHO, ECHO], phrase="ensemble tensor 'OUTPUT0' can appear in an output map only once"
    ),
    ensemble(
        "ens_unknown_input",
        [step("echo", {"NOPE": "INPUT0"}, {"OUTPUT0": "OUTPUT0"})],
        phrase="ensemble tensor INPUT0 is mapping to non-existing input NOPE in model echo",
    ),
    ensemble(
        "ens_unknown_output",
        [step("echo", {"INPUT0": "INPUT0"}, {"NOPE": "OUTPUT0"})],
        phrase="ensemble tensor OUTPUT0 is mapped from non-existing output NOPE in model echo",
    ),
    ensemble(
        "ens_type",
        [ECHO],
        io=IO.replace("TYPE_FP32", "TYPE_FP16", 1),
        phrase="inconsistent data type: TYPE_FP16 is inferred from model ens_type while TYPE_FP32",
    ),
    ensemble(
        "ens_shape",
        [ECHO],
        io=IO.replace("dims: [4]", "dims: [5]", 1),
        phrase="inconsistent shape: [-1,5] is inferred from model ens_shape while [-1,4]",
    ),
    ensemble(
        "ens_batch",
        [ECHO],
        max_batch_size=8,
        phrase="ensemble ens_batch allows maximum batch size 8, but it contains model echo",
    ),
    ensemble(
        "ens_instances",
        [ECHO],
        extra="instance_group [{ kind: KIND_CPU }]",
        phrase="instance group should not be specified for ensemble 'ens_instances'",
    ),
    ensemble("ens_warmup", [ECHO], extra=WARM_OK, phrase="model_warmup can not be specified for ensemble 'ens_warmup'"),
    ensemble(
        "ens_no_model_name",
        [step("", {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUTPUT0"})],
        phrase="must specify 'model_name' in step 0 of ensemble 'ens_no_model_name'",
    ),
    ensemble(
        "ens_no_input_map", [step("echo", {}, {"OUTPUT0": "OUTPUT0"})], phrase="must specify 'input_map' in step 0"
    ),
    ensemble("ens_no_steps", [], phrase="must specify 'step' for ensemble 'ens_no_steps'"),
    ensemble(
        "ens_no_output_map",
        [step("echo", {"INPUT0": "INPUT0"}, {})],
        phrase="must specify 'output_map' in step 0 of ensemble 'ens_no_output_map'",
    ),
    ensemble(
        "ens_optimization",
        [ECHO],
        extra="optimization { }",
        phrase="optimization should not be specified for ensemble 'ens_optimization'",
    ),
    ensemble(
        "ens_output_not_written",
        [ECHO, step("echo", {"INPUT0": "ghost"}, {"OUTPUT0": "OUT2"})],
        io=IO_OUT2,
        phrase="output 'OUT2' for ensemble 'ens_output_not_written' is not written: at least one of its depending "
        "tensors, 'ghost', is not connected",
    ),
    ensemble(
        "ens_unmapped_input",
        [step("echo2in", {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUTPUT0"})],
        phrase="input INPUT1 in model echo2in is not mapped to any ensemble tensors",
    ),
    ensemble(
        "ens_step_version",
        [step("echo", {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUTPUT0"}, version=7)],
        phrase="depends on 'echo' whose required version 7 is not loaded",
    ),
    model(
        "ens_without_platform",
        f"ensemble_scheduling {{ step [ {ECHO} ] }}",
        phrase="ensemble scheduling cannot be set for model 'ens_without_platform' whose platform is not ensemble",
    ),
    model(
        "ens_without_steps",
        backend=ENSEMBLE,
        model_py=False,
        phrase="ensemble scheduling must be set for ensemble ens_without_steps whose platform is ensemble",
    ),
    model(
        "ens_with_backend",
        f"ensemble_scheduling {{ step [ {ECHO} ] }}",
        backend=f"{ENSEMBLE}\n{PYTHON}",
        phrase="must have platform type 'ensemble' and empty backend type",
    ),
    model(
        "gpu_id_negative",
        "instance_group [{ kind: KIND_GPU gpus: [-1] }]",
        phrase="specifies invalid or unsupported gpu id -1. GPUs with at least the minimum required CUDA compute "
        "compatibility of 6.000000 are: ",
    ),
    model(
        "auto_kind_negative_gpu",
        "instance_group [{ gpus: [-1] }]",
        phrase="instance group auto_kind_negative_gpu_0 of model auto_kind_negative_gpu has kind KIND_CPU but "
        "specifies one or more GPUs",
    ),
    model(
        "instance_kind_unknown",
        "instance_group [{ kind: 7 }]",
        phrase="instance group instance_kind_unknown_0 of model instance_kind_unknown has unexpected kind KIND_AUTO",
    ),
    model(
        "batch_input_kind_unknown",
        'batch_input [{ kind: 99 target_name: "BI" data_type: TYPE_INT32 source_input: "INPUT0" }]',
        phrase="unknown batch input kind '' for batch_input_kind_unknown",
    ),
    model(
        "batch_output_kind_unknown",
        'batch_output [{ kind: 99 target_name: "OUTPUT0" source_input: "INPUT0" }]',
        phrase="unknown batch output kind '' for batch_output_kind_unknown",
    ),
    model(
        "state_initial_type",
        _state(_initial(data_type="TYPE_INT32")),
        phrase="The data type used for 'initial_state' field of state 'S_IN' does not match the state data type.",
    ),
    model(
        "state_initial_no_name",
        _state(_initial(name="")),
        phrase="Field 'name' must be set when using initial_state for state input 'S_IN'.",
    ),
    model(
        "state_initial_rank",
        _state(_initial(dims="4, 1")),
        phrase="Number of dimensions in 'initial_state' doesn't match the size of 'state' dimensions for state input "
        "'S_IN'. 2 != 1",
    ),
    model(
        "state_initial_variable",
        _state(_initial(dims="-1")),
        phrase="'initial_state' field for state input name 'S_IN' contains variable dimensions.",
    ),
    model(
        "state_initial_dim",
        _state(_initial(dims="5")),
        phrase="'initial_state' dim for input name 'S_IN' doesn't match 'state' dim description. 5 != 4",
    ),
    model(
        "state_initial_no_data",
        _state(_initial(data="")),
        phrase="initial_state setting expects state'S_IN' to have state_data set",
    ),
    model(
        "state_initial_file_missing",
        _state(_initial(data='data_file: "nope.bin"')),
        phrase="state_initial_file_missing/initial_state/nope.bin: No such file or directory",
    ),
    model(
        "state_initial_file_short",
        _state(_initial(data='data_file: "short.bin"')),
        files={"initial_state/short.bin": "abc"},
        phrase="initial_state setting expects 16 bytes, but the data provided from short.binonly has 3 bytes.",
    ),
    model(
        "state_initial_two",
        _state(f"{_initial()}, {_initial(name='j')}"),
        phrase="initial_state field for state input 'S_IN' must contain exactly one or zero element. Found '2' "
        "elements.",
    ),
    model(
        "state_input_twice",
        'sequence_batching { state [{ input_name: "S" output_name: "O1" data_type: TYPE_FP32 dims: [4] '
        f'initial_state [{_initial()}] }}, {{ input_name: "S" output_name: "O2" data_type: TYPE_FP32 dims: [4] '
        f"initial_state [{_initial()}] }}] }}",
        phrase="State input name 'S' specified more than once.",
    ),
    # After refusing this one, Triton 2.51 crashed (SIGSEGV) on the next model whose initial_state it
    # refused; so it comes after the initial_state cases.
    model(
        "strategy_with_sequence",
        "sequence_batching {}\n" + _strategy("/nonexistent/libbatch.so"),
        phrase="TRITON_BATCH_STRATEGY_PATH cannot be specified with sequence batcher, using default batching strategy",
    ),
    model(
        "strategy_missing",
        "dynamic_batching {}\n" + _strategy("/nonexistent/libbatch.so"),
        phrase="Batching library path not found: /nonexistent/libbatch.so",
    ),
    ensemble(
        "ens_decoupled_mix",
        [
            step("echo_decoupled", {"INPUT0": "INPUT0"}, {"OUTPUT0": "mid"}),
            step("echo2in", {"INPUT0": "mid", "INPUT1": "INPUT1"}, {"OUTPUT0": "mid2"}),
            step("echo", {"INPUT0": "mid2"}, {"OUTPUT0": "OUTPUT0"}),
        ],
        io=IO_TWO,
        phrase="in ensemble ens_decoupled_mix, step of model 'echo2in' receives inputs originated from different "
        "decoupled models",
    ),
    ensemble(
        "ens_decoupled_outputs",
        [
            step("echo_decoupled", {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUTPUT0"}),
            step("echo", {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUT2"}),
        ],
        io=IO_OUT2,
        # The ensemble's outputs meet in one sink that Triton names after the ensemble.
        phrase="in ensemble ens_decoupled_outputs, step of model 'ens_decoupled_outputs' receives inputs originated "
        "from different decoupled models",
    ),
    ensemble(
        "ens_duplicate_output",
        [step("echo_two_outputs", {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUTPUT0"})],
        phrase="in ensemble ens_duplicate_output, multiple outputs in model echo_two_outputs are mapped to the same "
        "ensemble tensor OUTPUT0",
    ),
    ensemble(
        "ens_step_fails_load",
        [step("step_gpu_only", {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUTPUT0"})],
        phrase="ensemble 'ens_step_fails_load' depends on 'step_gpu_only' which has no loaded version. Model "
        "'step_gpu_only' loading failed with error: ",
    ),
    ensemble(
        "ens_step_without_version",
        [step("step_no_version", {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUTPUT0"})],
        phrase="ensemble 'ens_step_without_version' depends on 'step_no_version' which has no loaded version. Model "
        "'step_no_version' loading failed with error: at least one version must be available under the version "
        "policy of model 'step_no_version'",
    ),
    ensemble(
        "ens_step_fails_poll",
        [step("step_bad_dims", {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUTPUT0"})],
        phrase="ensemble ens_step_fails_poll contains models that are not available or ambiguous: step_bad_dims",
    ),
    ensemble(
        "ens_step_invalid",
        [step("ens_inner_missing", {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUTPUT0"})],
        phrase="ensemble 'ens_step_invalid' depends on 'ens_inner_missing' which is not valid. Model "
        "'ens_inner_missing' failed with error: ensemble ens_inner_missing contains models that are not available "
        "or ambiguous: nope",
    ),
    # Triton 2.51 never finishes loading these: the checker is the only early warning.
    model("model_py_missing", phrase="Python model file not found in", triton="hang", model_py=False),
    model(
        "warmup_batch_not_batching",
        WARMUP % (2, "INPUT0", "TYPE_FP32", "4", "zero_data: true"),
        max_batch_size=0,
        phrase="failed to run warmup sample 'w': batch size 2 for",
        triton="hang",
    ),
    model(
        "warmup_batch_too_big",
        WARMUP % (9, "INPUT0", "TYPE_FP32", "4", "zero_data: true"),
        phrase="failed to run warmup sample 'w': batch size 9 for",
        triton="hang",
    ),
]
