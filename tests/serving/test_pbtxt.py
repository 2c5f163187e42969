"""config.pbtxt rendering: valid against Triton's schema, and every param lands where Triton reads it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from tritonclient.grpc import model_config_pb2 as pb

from core.contract import (
    INPUTS,
    INSTANCE_OVERHEAD_BYTES,
    OUTPUTS,
    PARAMETERS,
    Machine,
    parse_config,
    render_config,
    resolve_instance_count,
)
from tests.serving.conftest import serving_params


def test_config_round_trips_through_tritons_schema() -> None:
    config = parse_config(render_config("qwen3-vl-v1", 1, serving_params()))

    assert config.name == "qwen3-vl-v1"
    assert config.backend == "python"
    assert config.max_batch_size == 8
    assert [(t.name, pb.DataType.Name(t.data_type), t.optional) for t in config.input] == [
        (spec.name, spec.data_type, spec.optional) for spec in INPUTS
    ]
    assert [t.name for t in config.output] == [spec.name for spec in OUTPUTS]
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 5000
    # Overload is refused at once rather than queued forever.
    policy = config.dynamic_batching.default_queue_policy
    assert (policy.max_queue_size, policy.default_timeout_microseconds) == (64, 30_000_000)
    assert policy.timeout_action == pb.ModelQueuePolicy.REJECT
    # Each build is its own Triton model serving exactly its own version.
    assert list(config.version_policy.specific.versions) == [1]
    (group,) = config.instance_group
    assert (group.count, group.kind) == (1, pb.ModelInstanceGroup.KIND_CPU)


def test_generation_parameters_are_strings_model_py_reads() -> None:
    config = parse_config(
        render_config("m", 1, serving_params(max_new_tokens=5, temperature=0.7, top_p=0.9, max_history=3))
    )

    values = {key: value.string_value for key, value in config.parameters.items()}
    assert values == {
        "MAX_NEW_TOKENS": "5",
        "TEMPERATURE": "0.7",
        "TOP_P": "0.9",
        "MAX_HISTORY": "3",
        "MAX_IMAGES": "4",
        "MAX_IMAGE_PIXELS": str(1 << 20),
        "MAX_PROMPT_TOKENS": "4096",
        "COMPUTE_DTYPE": "float32",
        "IMAGE_FORMATS": "PNG,JPEG,WEBP,GIF,BMP",
    }
    assert set(values) == set(PARAMETERS)


@pytest.mark.parametrize(
    ("kind", "dtype", "expected"),
    [("cpu", "auto", "float32"), ("gpu", "auto", "bfloat16"), ("cpu", "bfloat16", "bfloat16")],
)
def test_compute_dtype_is_written_resolved(kind: str, dtype: str, expected: str) -> None:
    config = parse_config(render_config("m", 1, serving_params(instance_kind=kind, compute_dtype=dtype)))

    assert config.parameters["COMPUTE_DTYPE"].string_value == expected


def test_warmup_sends_the_messages_input_from_the_warmup_folder() -> None:
    config = parse_config(render_config("m", 1, serving_params()))

    (warmup,) = config.model_warmup
    assert warmup.batch_size == 1
    assert warmup.inputs["messages"].input_data_file == "messages.bin"
    assert not parse_config(render_config("m", 1, serving_params(), warmup=False)).model_warmup


def test_unbatched_config_has_no_dynamic_batcher() -> None:
    config = parse_config(render_config("m", 1, serving_params(dynamic_batching=False)))

    assert not config.HasField("dynamic_batching")


def test_gpu_instances() -> None:
    config = parse_config(render_config("m", 1, serving_params(instance_kind="gpu", instance_count=2)))

    assert (config.instance_group[0].kind, config.instance_group[0].count) == (pb.ModelInstanceGroup.KIND_GPU, 2)


_GIB = 2**30


@pytest.mark.parametrize(
    ("count", "kind", "machine", "weights", "engine", "expected"),
    [
        # CPU: one instance per usable core and one spare (a free slot wakes the batcher), at least two.
        ("auto", "cpu", Machine(cores=2, memory_bytes=24 * _GIB), 2_000_000, "transformers", 3),
        ("auto", "cpu", Machine(cores=1, memory_bytes=24 * _GIB), 2_000_000, "transformers", 2),
        ("auto", "cpu", Machine(cores=16, memory_bytes=256 * _GIB), 2_000_000, "transformers", 17),
        # ... and no more than half the memory holds: 16 GB of weights on a 64-core, 128 GiB machine.
        ("auto", "cpu", Machine(cores=64, memory_bytes=128 * _GIB), 16 * _GIB, "transformers", 3),
        # One fits at most: one, not an out-of-memory load.
        ("auto", "cpu", Machine(cores=8, memory_bytes=40 * _GIB), 16 * _GIB, "transformers", 1),
        # GPU: two per GPU whatever the host; vLLM: one engine per GPU.
        ("auto", "gpu", Machine(cores=1, memory_bytes=1 * _GIB), 16 * _GIB, "transformers", 2),
        ("auto", "gpu", Machine(cores=64, memory_bytes=512 * _GIB), 0, "vllm", 1),
        # A number is the user's choice, kept as it is.
        (1, "cpu", Machine(cores=16, memory_bytes=256 * _GIB), 0, "transformers", 1),
        (5, "gpu", Machine(cores=16, memory_bytes=256 * _GIB), 0, "transformers", 5),
    ],
)
def test_instance_count_resolution(
    count: int | str, kind: str, machine: Machine, weights: int, engine: str, expected: int
) -> None:
    assert resolve_instance_count(count, kind, machine, weights, engine) == expected


def test_memory_bound_counts_the_overhead_of_each_instance() -> None:
    per_instance = 4 * _GIB + INSTANCE_OVERHEAD_BYTES
    machine = Machine(cores=64, memory_bytes=2 * 10 * per_instance)

    assert resolve_instance_count("auto", "cpu", machine, 4 * _GIB, "transformers") == 10


def test_an_unresolved_auto_count_is_refused_at_render() -> None:
    with pytest.raises(ValueError, match="resolve_instance_count"):
        render_config("m", 1, serving_params(instance_count="auto"))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"preferred_batch_sizes": [4, 16]}, "preferred_batch_sizes"),
        ({"top_p": 0.0}, "top_p"),
        ({"instance_kind": "tpu"}, "instance_kind"),
        ({"max_queue_size": 0}, "max_queue_size"),
        ({"compute_dtype": "int4"}, "compute_dtype"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"instance_count": 0}, "instance_count"),
        ({"instance_count": "many"}, "instance_count"),
    ],
)
def test_bad_params_fail_naming_the_problem(override: dict[str, object], key: str) -> None:
    with pytest.raises(ValidationError, match=key):
        serving_params(**override)
