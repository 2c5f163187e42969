"""Render a model's ``config.pbtxt`` from params, through Triton's own protobuf schema.

This module owns the tensor contract of the served model (names, types, shapes). ``model.py`` reads
it back from ``args["model_config"]`` and the client imports the names from here, so a tensor is
declared exactly once. Building the text through ``model_config_pb2`` means a field Triton does not
know cannot be rendered at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal, cast

from google.protobuf import text_format
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator
from tritonclient.grpc import model_config_pb2 as pb

from core.params import ParamsGroup

#: Inputs. ``messages`` is one JSON document: a list of OpenAI-style chat messages. The others are the
#: OpenAI request fields of the same names; ``stop``, ``logit_bias`` and ``response_format`` are JSON
#: documents (a list of strings, an object of token id -> bias, OpenAI's ``response_format`` object).
INPUT_MESSAGES = "messages"
INPUT_MAX_TOKENS = "max_tokens"
INPUT_TEMPERATURE = "temperature"
INPUT_TOP_P = "top_p"
INPUT_SEED = "seed"
INPUT_STOP = "stop"
INPUT_PRESENCE_PENALTY = "presence_penalty"
INPUT_FREQUENCY_PENALTY = "frequency_penalty"
INPUT_LOGIT_BIAS = "logit_bias"
INPUT_LOGPROBS = "logprobs"
INPUT_TOP_LOGPROBS = "top_logprobs"
INPUT_RESPONSE_FORMAT = "response_format"
#: Outputs, in every response of the stream: ``text`` is what this response adds to the answer,
#: ``completion_tokens`` the tokens generated so far (the end-of-sequence token not counted),
#: ``finish_reason`` empty until the last response ("stop" or "length"), ``token_logprobs`` a JSON
#: list of OpenAI ``logprobs.content`` entries for the new tokens (empty unless asked for).
OUTPUT_TEXT = "text"
OUTPUT_PROMPT_TOKENS = "prompt_tokens"
OUTPUT_COMPLETION_TOKENS = "completion_tokens"
OUTPUT_MODEL_VERSION = "model_version"
OUTPUT_FINISH_REASON = "finish_reason"
OUTPUT_TOKEN_LOGPROBS = "token_logprobs"

#: How model.py begins the message of a failure that is its own (INTERNAL), not the request's: a gRPC
#: stream carries an error's message only, so a client tells the two apart by it.
INTERNAL_ERROR = "internal error"

#: ``parameters`` keys that ``model.py`` reads (the seed project's setting names).
PARAM_MAX_NEW_TOKENS = "MAX_NEW_TOKENS"
PARAM_TEMPERATURE = "TEMPERATURE"
PARAM_TOP_P = "TOP_P"
PARAM_MAX_HISTORY = "MAX_HISTORY"

#: A Triton model folder's config file.
CONFIG_FILE = "config.pbtxt"
#: Where Triton looks for warmup data: ``<model>/warmup/<file>``.
WARMUP_DIR = "warmup"
WARMUP_MESSAGES_FILE = "messages.bin"


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the contract; ``dims`` exclude the batch dimension."""

    name: str
    data_type: str
    dims: tuple[int, ...] = (1,)
    optional: bool = False


# Triton's dynamic batcher only batches requests that carry the same inputs with the same shapes:
# every input has one element, and a client that wants batching sends the same set every time (the
# gateway sends them all).
INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec(INPUT_MESSAGES, "TYPE_STRING"),
    TensorSpec(INPUT_MAX_TOKENS, "TYPE_INT32", optional=True),
    TensorSpec(INPUT_TEMPERATURE, "TYPE_FP32", optional=True),
    TensorSpec(INPUT_TOP_P, "TYPE_FP32", optional=True),
    TensorSpec(INPUT_SEED, "TYPE_INT64", optional=True),
    TensorSpec(INPUT_STOP, "TYPE_STRING", optional=True),
    TensorSpec(INPUT_PRESENCE_PENALTY, "TYPE_FP32", optional=True),
    TensorSpec(INPUT_FREQUENCY_PENALTY, "TYPE_FP32", optional=True),
    TensorSpec(INPUT_LOGIT_BIAS, "TYPE_STRING", optional=True),
    TensorSpec(INPUT_LOGPROBS, "TYPE_BOOL", optional=True),
    TensorSpec(INPUT_TOP_LOGPROBS, "TYPE_INT32", optional=True),
    TensorSpec(INPUT_RESPONSE_FORMAT, "TYPE_STRING", optional=True),
)
OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec(OUTPUT_TEXT, "TYPE_STRING"),
    TensorSpec(OUTPUT_PROMPT_TOKENS, "TYPE_INT32"),
    TensorSpec(OUTPUT_COMPLETION_TOKENS, "TYPE_INT32"),
    TensorSpec(OUTPUT_MODEL_VERSION, "TYPE_STRING"),
    TensorSpec(OUTPUT_FINISH_REASON, "TYPE_STRING"),
    TensorSpec(OUTPUT_TOKEN_LOGPROBS, "TYPE_STRING"),
)


#: The limits ``model.py`` enforces per request, each refused with a 400 that names it.
PARAM_MAX_IMAGES = "MAX_IMAGES"
PARAM_MAX_IMAGE_PIXELS = "MAX_IMAGE_PIXELS"
PARAM_MAX_PROMPT_TOKENS = "MAX_PROMPT_TOKENS"
#: The dtype the weights compute in (bitsandbytes' compute dtype follows it), never the checkpoint's guess.
PARAM_COMPUTE_DTYPE = "COMPUTE_DTYPE"
#: The image formats a request may send (Pillow's names), the one list: the gateway refuses any other
#: with a 400, and model.py opens only these. model.py ships without this package (a Triton model
#: folder holds model.py alone), so it reads the list from its config.pbtxt, comma-separated.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
PARAM_IMAGE_FORMATS = "IMAGE_FORMATS"
#: Every ``parameters`` key model.py reads; a config without one of them is refused at load.
PARAMETERS = (
    PARAM_MAX_NEW_TOKENS,
    PARAM_TEMPERATURE,
    PARAM_TOP_P,
    PARAM_MAX_HISTORY,
    PARAM_MAX_IMAGES,
    PARAM_MAX_IMAGE_PIXELS,
    PARAM_MAX_PROMPT_TOKENS,
    PARAM_COMPUTE_DTYPE,
    PARAM_IMAGE_FORMATS,
)

ComputeDtype = Literal["auto", "float32", "bfloat16", "float16"]
#: A positive count, or ``auto``: derived when the build is packaged (``resolve_instance_count``).
InstanceCount = PositiveInt | Literal["auto"]

# Triton 2.51's dynamic batcher sleeps its full 500 ms empty-queue wait when requests arrive while every
# instance is busy: an arrival wakes it only if an instance slot is free, and an instance coming free
# does not (traced: docs/performance.md). So a batching model needs an instance that is free when
# requests arrive: never one instance, and on CPU one more than the cores that compute.
MIN_BATCHING_INSTANCES = 2
#: Instances beyond one per core on CPU builds: the free slot an arrival needs to wake the batcher.
SPARE_CPU_INSTANCES = 1
#: KIND_GPU's count is per GPU, so this is the same on every machine.
GPU_INSTANCES_AUTO = 2
# What one Python-backend instance holds besides its weights (the stub, torch, transformers, the
# processor): make bench measures it per build; with the tiny model each stub held 841 MiB RSS (556 MiB
# PSS) on 2026-12-04 here, so this planning figure rounds up.
INSTANCE_OVERHEAD_BYTES = 2**30
# An auto count leaves at least half of the machine's memory to everything else on it.
_MEMORY_SHARE = 0.5


@dataclass(frozen=True)
class Machine:
    """What an ``auto`` instance count is derived from on CPU builds."""

    cores: int
    memory_bytes: int


def resolve_instance_count(count: int | str, kind: str, machine: Machine, weights_bytes: int, engine: str) -> int:
    """The instance count rendered into config.pbtxt; ``auto`` is derived, a number is kept as it is.

    auto: one vLLM engine per GPU (vLLM batches continuously; Triton's batcher is off); two
    Python-backend instances per GPU; on CPU one instance per usable core (each stub computes on one
    OpenMP thread) plus ``SPARE_CPU_INSTANCES``, so that requests arriving while every core computes
    find a free instance and wake the batcher, and no more than half the machine's memory holds
    (weights plus ``INSTANCE_OVERHEAD_BYTES`` each).
    """
    if count != "auto":
        return int(count)
    if engine == "vllm":
        return 1
    if kind == "gpu":
        return GPU_INSTANCES_AUTO
    fits = int(machine.memory_bytes * _MEMORY_SHARE // (weights_bytes + INSTANCE_OVERHEAD_BYTES))
    return max(1, min(max(MIN_BATCHING_INSTANCES, machine.cores + SPARE_CPU_INSTANCES), fits))


class ServingParams(ParamsGroup):
    """The params that shape ``config.pbtxt``: batching, queueing, instances, limits, generation defaults."""

    max_batch_size: PositiveInt
    dynamic_batching: bool
    preferred_batch_sizes: list[PositiveInt]
    max_queue_delay_us: int = Field(ge=0)
    # Overload is a fast refusal, not an unbounded wait: Triton rejects a request that finds the
    # queue full, or that waited longer than the timeout (the gateway answers 503 with Retry-After).
    max_queue_size: PositiveInt
    queue_timeout_us: PositiveInt
    # auto: derived when the build is packaged (resolve_instance_count); a number is rendered as is.
    instance_count: InstanceCount
    instance_kind: Literal["cpu", "gpu"]
    # auto: bfloat16 on GPU instances, float32 on CPU ones (rendered resolved into config.pbtxt).
    compute_dtype: ComputeDtype
    max_new_tokens: PositiveInt
    temperature: float = Field(ge=0.0)
    top_p: float = Field(gt=0.0, le=1.0)
    max_history: int = Field(ge=0)
    max_images: PositiveInt
    max_image_pixels: PositiveInt
    max_prompt_tokens: PositiveInt

    @model_validator(mode="after")
    def _check_batch_sizes(self) -> ServingParams:
        too_big = [size for size in self.preferred_batch_sizes if size > self.max_batch_size]
        if too_big:
            raise ValueError(
                f"preferred_batch_sizes {too_big} exceed max_batch_size {self.max_batch_size}; "
                "Triton refuses such a config at load"
            )
        return self

    def resolved_dtype(self) -> str:
        """The compute dtype written into config.pbtxt."""
        if self.compute_dtype == "auto":
            return "bfloat16" if self.instance_kind == "gpu" else "float32"
        return self.compute_dtype


# -- Triton's vLLM backend (``package.engine: vllm``) -------------------------------------------------
# The vLLM backend has a tensor contract of its own (see vllm_backend's ``auto_complete_config``): a
# prompt string already rendered with the model's chat template, images as base64 strings, sampling
# parameters as one JSON string, and a decoupled (streaming-capable) response. Triton runs with
# auto-complete disabled here, so the config names every tensor a client may send.
VLLM_BACKEND = "vllm"
#: The file the vLLM backend reads its engine arguments from, in the version folder.
VLLM_ENGINE_ARGS_FILE = "model.json"
VLLM_INPUT_TEXT = "text_input"
VLLM_INPUT_IMAGE = "image"
VLLM_INPUT_STREAM = "stream"
VLLM_INPUT_SAMPLING_PARAMETERS = "sampling_parameters"
VLLM_INPUT_EXCLUDE_INPUT = "exclude_input_in_output"
VLLM_INPUT_RETURN_NUM_INPUT_TOKENS = "return_num_input_tokens"
VLLM_INPUT_RETURN_NUM_OUTPUT_TOKENS = "return_num_output_tokens"
VLLM_OUTPUT_TEXT = "text_output"
VLLM_OUTPUT_NUM_INPUT_TOKENS = "num_input_tokens"
VLLM_OUTPUT_NUM_OUTPUT_TOKENS = "num_output_tokens"

VLLM_INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec(VLLM_INPUT_TEXT, "TYPE_STRING"),
    # Each element one base64-encoded image; the prompt holds one image placeholder per image.
    TensorSpec(VLLM_INPUT_IMAGE, "TYPE_STRING", dims=(-1,), optional=True),
    TensorSpec(VLLM_INPUT_STREAM, "TYPE_BOOL", optional=True),
    TensorSpec(VLLM_INPUT_SAMPLING_PARAMETERS, "TYPE_STRING", optional=True),
    TensorSpec(VLLM_INPUT_EXCLUDE_INPUT, "TYPE_BOOL", optional=True),
    TensorSpec(VLLM_INPUT_RETURN_NUM_INPUT_TOKENS, "TYPE_BOOL", optional=True),
    TensorSpec(VLLM_INPUT_RETURN_NUM_OUTPUT_TOKENS, "TYPE_BOOL", optional=True),
)
VLLM_OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec(VLLM_OUTPUT_TEXT, "TYPE_STRING", dims=(-1,)),
    TensorSpec(VLLM_OUTPUT_NUM_INPUT_TOKENS, "TYPE_UINT32"),
    TensorSpec(VLLM_OUTPUT_NUM_OUTPUT_TOKENS, "TYPE_UINT32", dims=(-1,)),
)
#: The ``parameters`` a vLLM-served model carries: the request-side defaults and limits a client (the
#: gateway) applies before it calls; the engine's own settings live in ``model.json``, never here.
VLLM_PARAMETERS = (
    PARAM_MAX_NEW_TOKENS,
    PARAM_TEMPERATURE,
    PARAM_TOP_P,
    PARAM_MAX_HISTORY,
    PARAM_MAX_IMAGES,
    PARAM_MAX_IMAGE_PIXELS,
    PARAM_MAX_PROMPT_TOKENS,
)

Engine = Literal["transformers", "vllm"]
VllmQuantization = Literal["fp8", "bitsandbytes", "awq", "gptq"]
VllmDtype = Literal["auto", "bfloat16", "float16", "float32"]


def _absolute_posix_path(value: str, what: str) -> str:
    # The path is read inside a Linux container; a relative one would depend on Triton's working folder.
    if not value.startswith("/") or ".." in value.split("/"):
        raise ValueError(f"{what} {value!r} must be an absolute path without '..' (as the Triton container sees it)")
    return value


class VllmParams(ParamsGroup):
    """``package.vllm``: what only Triton's vLLM backend needs (read when ``package.engine`` is ``vllm``)."""

    # Where the Triton containers see the checkpoint. vLLM loads it by path (nothing is downloaded),
    # so it lives on the serving volume, not in the version folder.
    model_path: str
    gpu_memory_utilization: float = Field(gt=0.0, le=1.0)
    tensor_parallel_size: PositiveInt
    # CUDA graphs off: a faster start and less memory, at some throughput.
    enforce_eager: bool
    # None: whatever the checkpoint's own quantization_config says (or none).
    quantization: VllmQuantization | None

    @field_validator("model_path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return _absolute_posix_path(value, "package.vllm.model_path")


class VllmEngineArgs(BaseModel):
    """The vLLM engine arguments this project writes into ``<version>/model.json`` (``AsyncEngineArgs`` keys).

    Known keys only, with their types and ranges, so a typo or a value vLLM would refuse fails here,
    offline, instead of when a GPU server loads the model.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    model: str
    dtype: VllmDtype
    gpu_memory_utilization: float = Field(gt=0.0, le=1.0)
    max_model_len: PositiveInt
    max_num_seqs: PositiveInt
    tensor_parallel_size: PositiveInt
    limit_mm_per_prompt: dict[Literal["image", "video"], int]
    enforce_eager: bool
    trust_remote_code: bool
    quantization: VllmQuantization | None = None
    # Optional knobs a person may add by hand; the package stage does not write them.
    max_num_batched_tokens: PositiveInt | None = None
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] | None = None
    enable_prefix_caching: bool | None = None
    seed: int | None = Field(default=None, ge=0)
    disable_log_stats: bool | None = None

    @field_validator("model")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return _absolute_posix_path(value, "model")

    @field_validator("limit_mm_per_prompt")
    @classmethod
    def _counts(cls, value: dict[str, int]) -> dict[str, int]:
        if any(count < 0 for count in value.values()):
            raise ValueError(f"limit_mm_per_prompt counts must be 0 or more, got {value}")
        return value


class PackageParams(ServingParams):
    """The ``package`` group of params.yaml: the serving config plus the build's version number."""

    version: PositiveInt
    # transformers: the Python backend (serving/backend/model.py) with the weights in the version
    # folder. vllm: Triton's vLLM backend, engine arguments in <version>/model.json (another tensor
    # contract: see the VLLM_* names above).
    engine: Engine = "transformers"
    vllm: VllmParams | None = None

    @model_validator(mode="after")
    def _engine_settings(self) -> PackageParams:
        if self.engine != "vllm":
            return self
        if self.vllm is None:
            raise ValueError("engine 'vllm' needs the package.vllm group (model_path, gpu_memory_utilization, ...)")
        if self.instance_kind != "gpu":
            raise ValueError("engine 'vllm' runs on GPUs only: set package.instance_kind to gpu")
        if self.instance_count == "auto":
            return self  # one engine per GPU (resolve_instance_count)
        if self.vllm.tensor_parallel_size > 1 and self.instance_count != 1:
            raise ValueError("a multi-GPU vLLM engine (tensor_parallel_size > 1) is one instance: set instance_count 1")
        # KIND_GPU puts instance_count engines on every GPU, each taking its share of that GPU's memory.
        if self.vllm.tensor_parallel_size == 1 and self.instance_count * self.vllm.gpu_memory_utilization > 1.0:
            raise ValueError(
                f"instance_count {self.instance_count} x vllm.gpu_memory_utilization "
                f"{self.vllm.gpu_memory_utilization} is over one GPU's memory"
            )
        return self


def _count(params: ServingParams) -> int:
    if params.instance_count == "auto":
        raise ValueError("instance_count 'auto' must be resolved (resolve_instance_count) before rendering")
    return params.instance_count


def render_config(model_name: str, version: int, params: ServingParams, *, warmup: bool = True) -> str:
    """``config.pbtxt`` for the Triton model ``model_name`` serving exactly ``version``.

    ``warmup`` adds a request read from the model's warmup folder. ``params.instance_count`` must be
    a number by now (``resolve_instance_count``).
    """
    config = pb.ModelConfig(name=model_name, backend="python", max_batch_size=params.max_batch_size)
    # model.py streams: one response per token group, the last flagged final (Triton's decoupled policy).
    config.model_transaction_policy.decoupled = True
    for spec in INPUTS:
        config.input.add(
            name=spec.name, data_type=pb.DataType.Value(spec.data_type), dims=spec.dims, optional=spec.optional
        )
    for spec in OUTPUTS:
        config.output.add(name=spec.name, data_type=pb.DataType.Value(spec.data_type), dims=spec.dims)
    config.version_policy.specific.versions.append(version)
    kind = {"cpu": pb.ModelInstanceGroup.KIND_CPU, "gpu": pb.ModelInstanceGroup.KIND_GPU}[params.instance_kind]
    config.instance_group.add(count=_count(params), kind=kind)
    if params.dynamic_batching:
        batching = config.dynamic_batching
        batching.preferred_batch_size.extend(params.preferred_batch_sizes)
        batching.max_queue_delay_microseconds = params.max_queue_delay_us
        batching.default_queue_policy.max_queue_size = params.max_queue_size
        batching.default_queue_policy.default_timeout_microseconds = params.queue_timeout_us
        batching.default_queue_policy.timeout_action = pb.ModelQueuePolicy.REJECT
    for key, value in (
        (PARAM_MAX_NEW_TOKENS, params.max_new_tokens),
        (PARAM_TEMPERATURE, params.temperature),
        (PARAM_TOP_P, params.top_p),
        (PARAM_MAX_HISTORY, params.max_history),
        (PARAM_MAX_IMAGES, params.max_images),
        (PARAM_MAX_IMAGE_PIXELS, params.max_image_pixels),
        (PARAM_MAX_PROMPT_TOKENS, params.max_prompt_tokens),
        (PARAM_COMPUTE_DTYPE, params.resolved_dtype()),
        (PARAM_IMAGE_FORMATS, ",".join(IMAGE_FORMATS)),
    ):
        config.parameters[key].string_value = str(value)
    if warmup:
        # A real image and question: the first user request must not pay for lazy initialisation.
        request = config.model_warmup.add(name="sample_request", batch_size=1, count=1)
        messages = request.inputs[INPUT_MESSAGES]
        messages.data_type = pb.TYPE_STRING
        messages.dims.extend(INPUTS[0].dims)
        messages.input_data_file = WARMUP_MESSAGES_FILE
    body: str = text_format.MessageToString(config)
    return "# Generated by the package stage from params.yaml; do not edit.\n" + body


def parse_config(text: str) -> pb.ModelConfig:
    """Parse ``config.pbtxt`` text back into the protobuf (raises ``text_format.ParseError``)."""
    return text_format.Parse(text, pb.ModelConfig())


def vllm_engine_args(params: PackageParams) -> VllmEngineArgs:
    """The engine arguments of a vLLM-served build, derived from the same params as the Python backend's."""
    if params.vllm is None:
        raise ValueError("engine 'vllm' needs the package.vllm group")
    return VllmEngineArgs(
        model=params.vllm.model_path,
        dtype=cast(VllmDtype, params.resolved_dtype()),
        gpu_memory_utilization=params.vllm.gpu_memory_utilization,
        # A whole conversation: the longest prompt model.py accepts plus the longest answer.
        max_model_len=params.max_prompt_tokens + params.max_new_tokens,
        # vLLM batches continuously; Triton's batcher stays off (max_batch_size 0).
        max_num_seqs=params.max_batch_size,
        tensor_parallel_size=params.vllm.tensor_parallel_size,
        limit_mm_per_prompt={"image": params.max_images},
        enforce_eager=params.vllm.enforce_eager,
        trust_remote_code=False,  # Qwen3-VL is in vLLM itself; never run code shipped with a checkpoint
        quantization=params.vllm.quantization,
    )


def render_engine_args(args: VllmEngineArgs) -> str:
    """``model.json`` text: sorted keys, unset optional keys left out."""
    return json.dumps(args.model_dump(exclude_none=True), indent=2, sort_keys=True) + "\n"


def render_vllm_config(model_name: str, version: int, params: PackageParams) -> str:
    """``config.pbtxt`` of a build served by Triton's vLLM backend (``package.engine: vllm``)."""
    if params.vllm is None:
        raise ValueError("engine 'vllm' needs the package.vllm group")
    # vLLM schedules and batches requests itself: Triton's batcher is off and responses are decoupled.
    config = pb.ModelConfig(name=model_name, backend=VLLM_BACKEND, max_batch_size=0)
    config.model_transaction_policy.decoupled = True
    for spec in VLLM_INPUTS:
        config.input.add(
            name=spec.name, data_type=pb.DataType.Value(spec.data_type), dims=spec.dims, optional=spec.optional
        )
    for spec in VLLM_OUTPUTS:
        config.output.add(name=spec.name, data_type=pb.DataType.Value(spec.data_type), dims=spec.dims)
    config.version_policy.specific.versions.append(version)
    if params.vllm.tensor_parallel_size == 1:
        config.instance_group.add(count=_count(params), kind=pb.ModelInstanceGroup.KIND_GPU)
    else:
        # The backend refuses KIND_GPU for a multi-GPU engine: KIND_MODEL leaves placement to vLLM.
        config.instance_group.add(count=1, kind=pb.ModelInstanceGroup.KIND_MODEL)
    values = {
        PARAM_MAX_NEW_TOKENS: params.max_new_tokens,
        PARAM_TEMPERATURE: params.temperature,
        PARAM_TOP_P: params.top_p,
        PARAM_MAX_HISTORY: params.max_history,
        PARAM_MAX_IMAGES: params.max_images,
        PARAM_MAX_IMAGE_PIXELS: params.max_image_pixels,
        PARAM_MAX_PROMPT_TOKENS: params.max_prompt_tokens,
    }
    for key in VLLM_PARAMETERS:
        config.parameters[key].string_value = str(values[key])
    body: str = text_format.MessageToString(config)
    return "# Generated by the package stage from params.yaml (engine: vllm); do not edit.\n" + body
