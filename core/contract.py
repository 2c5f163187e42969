"""Render a model's ``config.pbtxt`` from params, through Triton's own protobuf schema.

This module owns the tensor contract of the served model (names, types, shapes). ``model.py`` reads
it back from ``args["model_config"]`` and the client imports the names from here, so a tensor is
declared exactly once. Building the text through ``model_config_pb2`` means a field Triton does not
know cannot be rendered at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from google.protobuf import text_format
from pydantic import Field, PositiveInt, model_validator
from tritonclient.grpc import model_config_pb2 as pb

from core.params import ParamsGroup

#: Inputs. ``messages`` is one JSON document: a list of OpenAI-style chat messages.
INPUT_MESSAGES = "messages"
INPUT_MAX_TOKENS = "max_tokens"
INPUT_TEMPERATURE = "temperature"
#: Outputs.
OUTPUT_TEXT = "text"
OUTPUT_PROMPT_TOKENS = "prompt_tokens"
OUTPUT_COMPLETION_TOKENS = "completion_tokens"
OUTPUT_MODEL_VERSION = "model_version"

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


INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec(INPUT_MESSAGES, "TYPE_STRING"),
    TensorSpec(INPUT_MAX_TOKENS, "TYPE_INT32", optional=True),
    TensorSpec(INPUT_TEMPERATURE, "TYPE_FP32", optional=True),
)
OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec(OUTPUT_TEXT, "TYPE_STRING"),
    TensorSpec(OUTPUT_PROMPT_TOKENS, "TYPE_INT32"),
    TensorSpec(OUTPUT_COMPLETION_TOKENS, "TYPE_INT32"),
    TensorSpec(OUTPUT_MODEL_VERSION, "TYPE_STRING"),
)


#: The limits ``model.py`` enforces per request, each refused with a 400 that names it.
PARAM_MAX_IMAGES = "MAX_IMAGES"
PARAM_MAX_IMAGE_PIXELS = "MAX_IMAGE_PIXELS"
PARAM_MAX_PROMPT_TOKENS = "MAX_PROMPT_TOKENS"
#: The dtype the weights compute in (bitsandbytes' compute dtype follows it), never the checkpoint's guess.
PARAM_COMPUTE_DTYPE = "COMPUTE_DTYPE"
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
)

ComputeDtype = Literal["auto", "float32", "bfloat16", "float16"]


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
    instance_count: PositiveInt
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


class PackageParams(ServingParams):
    """The ``package`` group of params.yaml: the serving config plus the build's version number."""

    version: PositiveInt


def render_config(model_name: str, version: int, params: ServingParams, *, warmup: bool = True) -> str:
    """``config.pbtxt`` for the Triton model ``model_name`` serving exactly ``version``.

    ``warmup`` adds a request read from the model's warmup folder.
    """
    config = pb.ModelConfig(name=model_name, backend="python", max_batch_size=params.max_batch_size)
    for spec in INPUTS:
        config.input.add(
            name=spec.name, data_type=pb.DataType.Value(spec.data_type), dims=spec.dims, optional=spec.optional
        )
    for spec in OUTPUTS:
        config.output.add(name=spec.name, data_type=pb.DataType.Value(spec.data_type), dims=spec.dims)
    config.version_policy.specific.versions.append(version)
    kind = {"cpu": pb.ModelInstanceGroup.KIND_CPU, "gpu": pb.ModelInstanceGroup.KIND_GPU}[params.instance_kind]
    config.instance_group.add(count=params.instance_count, kind=kind)
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
