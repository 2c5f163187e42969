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

from pipelines.params import ParamsGroup

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


class LatestPolicy(ParamsGroup):
    """Serve the ``latest`` highest-numbered versions."""

    latest: PositiveInt


class SpecificPolicy(ParamsGroup):
    """Serve exactly these versions."""

    specific: list[PositiveInt] = Field(min_length=1)


class ServingParams(ParamsGroup):
    """The params that shape ``config.pbtxt``: batching, instances, versions, generation defaults."""

    max_batch_size: PositiveInt
    dynamic_batching: bool
    preferred_batch_sizes: list[PositiveInt]
    max_queue_delay_us: int = Field(ge=0)
    instance_count: PositiveInt
    instance_kind: Literal["cpu", "gpu"]
    version_policy: Literal["all"] | LatestPolicy | SpecificPolicy
    max_new_tokens: PositiveInt
    temperature: float = Field(ge=0.0)
    top_p: float = Field(gt=0.0, le=1.0)
    max_history: int = Field(ge=0)

    @model_validator(mode="after")
    def _check_batch_sizes(self) -> ServingParams:
        too_big = [size for size in self.preferred_batch_sizes if size > self.max_batch_size]
        if too_big:
            raise ValueError(
                f"preferred_batch_sizes {too_big} exceed max_batch_size {self.max_batch_size}; "
                "Triton refuses such a config at load"
            )
        return self


def render_config(model_name: str, params: ServingParams, *, warmup: bool = True) -> str:
    """The ``config.pbtxt`` text for ``model_name``; ``warmup`` adds a request read from the warmup folder."""
    config = pb.ModelConfig(name=model_name, backend="python", max_batch_size=params.max_batch_size)
    for spec in INPUTS:
        config.input.add(
            name=spec.name, data_type=pb.DataType.Value(spec.data_type), dims=spec.dims, optional=spec.optional
        )
    for spec in OUTPUTS:
        config.output.add(name=spec.name, data_type=pb.DataType.Value(spec.data_type), dims=spec.dims)
    _set_version_policy(config, params.version_policy)
    kind = {"cpu": pb.ModelInstanceGroup.KIND_CPU, "gpu": pb.ModelInstanceGroup.KIND_GPU}[params.instance_kind]
    config.instance_group.add(count=params.instance_count, kind=kind)
    if params.dynamic_batching:
        config.dynamic_batching.preferred_batch_size.extend(params.preferred_batch_sizes)
        config.dynamic_batching.max_queue_delay_microseconds = params.max_queue_delay_us
    for key, value in (
        (PARAM_MAX_NEW_TOKENS, params.max_new_tokens),
        (PARAM_TEMPERATURE, params.temperature),
        (PARAM_TOP_P, params.top_p),
        (PARAM_MAX_HISTORY, params.max_history),
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
    return "# Generated by pipelines/package.py from params.yaml; do not edit.\n" + body


def parse_config(text: str) -> pb.ModelConfig:
    """Parse ``config.pbtxt`` text back into the protobuf (raises ``text_format.ParseError``)."""
    return text_format.Parse(text, pb.ModelConfig())


def _set_version_policy(config: pb.ModelConfig, policy: Literal["all"] | LatestPolicy | SpecificPolicy) -> None:
    if isinstance(policy, LatestPolicy):
        config.version_policy.latest.num_versions = policy.latest
    elif isinstance(policy, SpecificPolicy):
        config.version_policy.specific.versions.extend(policy.specific)
    else:
        config.version_policy.all.SetInParent()
