"""config.pbtxt rendering: valid against Triton's schema, and every param lands where Triton reads it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from tritonclient.grpc import model_config_pb2 as pb

from pipelines.pbtxt import INPUTS, OUTPUTS, parse_config, render_config
from tests.serving.conftest import serving_params


def test_config_round_trips_through_tritons_schema() -> None:
    config = parse_config(render_config("qwen3-vl", serving_params()))

    assert config.name == "qwen3-vl"
    assert config.backend == "python"
    assert config.max_batch_size == 8
    assert [(t.name, pb.DataType.Name(t.data_type), t.optional) for t in config.input] == [
        (spec.name, spec.data_type, spec.optional) for spec in INPUTS
    ]
    assert [t.name for t in config.output] == [spec.name for spec in OUTPUTS]
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 5000
    assert config.version_policy.WhichOneof("policy_choice") == "all"
    (group,) = config.instance_group
    assert (group.count, group.kind) == (1, pb.ModelInstanceGroup.KIND_CPU)


def test_generation_parameters_are_strings_model_py_reads() -> None:
    config = parse_config(
        render_config("m", serving_params(max_new_tokens=5, temperature=0.7, top_p=0.9, max_history=3))
    )

    values = {key: value.string_value for key, value in config.parameters.items()}
    assert values == {"MAX_NEW_TOKENS": "5", "TEMPERATURE": "0.7", "TOP_P": "0.9", "MAX_HISTORY": "3"}


def test_warmup_sends_the_messages_input_from_the_warmup_folder() -> None:
    config = parse_config(render_config("m", serving_params()))

    (warmup,) = config.model_warmup
    assert warmup.batch_size == 1
    assert warmup.inputs["messages"].input_data_file == "messages.bin"
    assert not parse_config(render_config("m", serving_params(), warmup=False)).model_warmup


def test_unbatched_config_has_no_dynamic_batcher() -> None:
    config = parse_config(render_config("m", serving_params(dynamic_batching=False)))

    assert not config.HasField("dynamic_batching")


@pytest.mark.parametrize(
    ("policy", "field", "expected"),
    [({"latest": 2}, "latest", [2]), ({"specific": [3, 5]}, "specific", [3, 5])],
)
def test_version_policies(policy: dict[str, object], field: str, expected: list[int]) -> None:
    config = parse_config(render_config("m", serving_params(version_policy=policy)))

    chosen = getattr(config.version_policy, field)
    assert config.version_policy.WhichOneof("policy_choice") == field
    assert (list(chosen.versions) if field == "specific" else [chosen.num_versions]) == expected


def test_gpu_instances() -> None:
    config = parse_config(render_config("m", serving_params(instance_kind="gpu", instance_count=2)))

    assert (config.instance_group[0].kind, config.instance_group[0].count) == (pb.ModelInstanceGroup.KIND_GPU, 2)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"preferred_batch_sizes": [4, 16]}, "preferred_batch_sizes"),
        ({"top_p": 0.0}, "top_p"),
        ({"instance_kind": "tpu"}, "instance_kind"),
        ({"version_policy": {"latest": 0}}, "version_policy"),
        ({"max_batch_size": 0}, "max_batch_size"),
    ],
)
def test_bad_params_fail_naming_the_problem(override: dict[str, object], key: str) -> None:
    with pytest.raises(ValidationError, match=key):
        serving_params(**override)
