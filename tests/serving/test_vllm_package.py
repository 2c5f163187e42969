"""The vLLM engine option: `package.engine: vllm` writes a model for Triton's vLLM backend, checked offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from tritonclient.grpc import model_config_pb2 as pb

from core.contract import (
    VLLM_INPUTS,
    VLLM_OUTPUTS,
    VLLM_PARAMETERS,
    PackageParams,
    VllmEngineArgs,
    parse_config,
    render_vllm_config,
)
from pipelines.package import main as package_main
from serving.triton.packaging import package
from tests.serving.conftest import BACKEND, MODEL, serving_params
from validation.check import check_paths
from validation.context import Target
from validation.findings import Severity
from validation.vllm_config import check_engine_args, check_vllm_model, check_vllm_paths, engine_args_schema

ROOT = Path(__file__).resolve().parents[2]


def vllm_group(model_path: Path | str, **changes: Any) -> dict[str, Any]:
    """A ``package.vllm`` group, every key explicit."""
    return {
        "model_path": str(model_path),
        "gpu_memory_utilization": 0.85,
        "tensor_parallel_size": 1,
        "enforce_eager": False,
        "quantization": None,
        **changes,
    }


def vllm_params(model_path: Path | str, **overrides: Any) -> PackageParams:
    vllm = vllm_group(model_path, **overrides.pop("vllm", {}))
    return serving_params(engine="vllm", instance_kind="gpu", vllm=vllm, **overrides)


def errors(findings: list[Any]) -> list[str]:
    return [f.message for f in findings if f.severity is Severity.ERROR]


def write_args(tmp_path: Path, **changes: Any) -> Path:
    args = json.loads(VllmEngineArgs(**_good_args(tmp_path)).model_dump_json(exclude_none=True))
    args.update(changes)
    path = tmp_path / "model.json"
    path.write_text(json.dumps(args, indent=2, sort_keys=True) + "\n")
    return path


def _good_args(tmp_path: Path) -> dict[str, Any]:
    return {
        "model": str(tmp_path),
        "dtype": "bfloat16",
        "gpu_memory_utilization": 0.9,
        "max_model_len": 4104,
        "max_num_seqs": 8,
        "tensor_parallel_size": 1,
        "limit_mm_per_prompt": {"image": 4},
        "enforce_eager": False,
        "trust_remote_code": False,
    }


def test_transformers_stays_the_default_and_ignores_the_vllm_group(fake_checkpoint: Path, tmp_path: Path) -> None:
    plain = serving_params(version=2)
    with_group = serving_params(version=2, vllm=vllm_group(tmp_path))
    assert plain.engine == "transformers"

    package(fake_checkpoint, BACKEND, tmp_path / "a", MODEL, plain)
    package(fake_checkpoint, BACKEND, tmp_path / "b", MODEL, with_group)

    def files(root: Path) -> dict[Path, bytes]:
        return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert parse_config((tmp_path / "a" / "qwen3-vl-v2" / "config.pbtxt").read_text()).backend == "python"


def test_the_project_params_still_load_as_transformers() -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())["package"]
    assert PackageParams.model_validate(raw).engine == raw.get("engine", "transformers")


def test_vllm_package_is_a_config_and_engine_args_only(tmp_path: Path) -> None:
    weights = tmp_path / "Qwen3-VL-8B-Instruct"
    weights.mkdir()

    result = package(tmp_path / "unused", BACKEND, tmp_path / "repo", MODEL, vllm_params(weights, version=3))

    model_dir = tmp_path / "repo" / "qwen3-vl-v3"
    assert sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*")) == ["3", "3/model.json", "config.pbtxt"]
    assert (result.triton_model, result.files) == ("qwen3-vl-v3", 1)
    config = parse_config((model_dir / "config.pbtxt").read_text())
    assert (config.name, config.backend, config.max_batch_size) == ("qwen3-vl-v3", "vllm", 0)
    assert config.model_transaction_policy.decoupled
    assert [t.name for t in config.input] == [spec.name for spec in VLLM_INPUTS]
    assert [t.name for t in config.output] == [spec.name for spec in VLLM_OUTPUTS]
    assert list(config.version_policy.specific.versions) == [3]
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, pb.ModelInstanceGroup.KIND_GPU)]
    assert not config.HasField("dynamic_batching")
    assert sorted(config.parameters) == sorted(VLLM_PARAMETERS)
    assert config.parameters["MAX_IMAGES"].string_value == "4"
    args = json.loads((model_dir / "3" / "model.json").read_text())
    assert args == {
        "model": str(weights),
        "dtype": "bfloat16",
        "gpu_memory_utilization": 0.85,
        "max_model_len": 4096 + 8,
        "max_num_seqs": 8,
        "tensor_parallel_size": 1,
        "limit_mm_per_prompt": {"image": 4},
        "enforce_eager": False,
        "trust_remote_code": False,
    }
    assert check_vllm_model(model_dir) == []


def test_generated_config_passes_check_config_for_a_vllm_server(tmp_path: Path) -> None:
    package(tmp_path, BACKEND, tmp_path / "repo", MODEL, vllm_params(tmp_path))

    findings = check_paths([tmp_path / "repo"], Target(backends=frozenset({"vllm"}), gpus=1))

    assert errors(findings) == []
    assert check_vllm_paths([tmp_path / "repo"]) == []


def test_multi_gpu_engine_is_one_kind_model_instance(tmp_path: Path) -> None:
    params = vllm_params(tmp_path, vllm={"tensor_parallel_size": 2, "quantization": "fp8"})

    config = parse_config(render_vllm_config("qwen3-vl-v1", 1, params))
    package(tmp_path, BACKEND, tmp_path / "repo", MODEL, params)

    assert [(g.count, g.kind) for g in config.instance_group] == [(1, pb.ModelInstanceGroup.KIND_MODEL)]
    args = json.loads((tmp_path / "repo" / "qwen3-vl-v1" / "1" / "model.json").read_text())
    assert (args["tensor_parallel_size"], args["quantization"]) == (2, "fp8")
    assert check_vllm_paths([tmp_path / "repo"]) == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"vllm": None}, "package.vllm group"),
        ({"instance_kind": "cpu"}, "GPUs only"),
        ({"instance_count": 2}, "over one GPU's memory"),
        ({"vllm": {"tensor_parallel_size": 2}, "instance_count": 2}, "instance_count 1"),
        ({"vllm": {"model_path": "models/qwen"}}, "absolute path"),
        ({"vllm": {"gpu_memory_utilization": 1.5}}, "less than or equal to 1"),
    ],
)
def test_bad_vllm_params_fail_at_load_with_the_key(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    values = vllm_params(tmp_path).model_dump()
    for key, value in overrides.items():
        if key == "vllm" and value is not None:
            values["vllm"] = {**values["vllm"], **value}
        else:
            values[key] = value
    with pytest.raises(ValidationError, match=message):
        PackageParams.model_validate(values)


def test_the_stage_writes_a_vllm_model_from_params_yaml(tmp_path: Path) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["package"].update(
        engine="vllm",
        instance_kind="gpu",
        vllm={
            "model_path": str(tmp_path),
            "gpu_memory_utilization": 0.9,
            "tensor_parallel_size": 1,
            "enforce_eager": True,
            "quantization": None,
        },
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    metrics = tmp_path / "package.json"

    code = package_main(
        ["--checkpoint", str(tmp_path / "none"), "--backend", str(BACKEND), "--repository", str(tmp_path / "repo"),
         "--metrics", str(metrics), "--params", str(tmp_path / "params.yaml")]
    )  # fmt: skip

    assert code == 0
    name = f"{params['registry']['model_name']}-v{params['package']['version']}"
    assert json.loads(metrics.read_text())["triton_model"] == name
    assert check_vllm_paths([tmp_path / "repo"]) == []


def test_schema_allows_known_keys_only() -> None:
    schema = engine_args_schema()

    assert schema["additionalProperties"] is False
    assert {"model", "dtype", "gpu_memory_utilization", "max_model_len", "limit_mm_per_prompt"} <= set(
        schema["properties"]
    )


@pytest.mark.parametrize(
    ("changes", "key", "message"),
    [
        ({"gpu_memory_utilisation": 0.9}, "gpu_memory_utilisation", "unknown engine argument"),
        ({"max_model_len": "4104"}, "max_model_len", "valid integer"),
        ({"gpu_memory_utilization": 0}, "gpu_memory_utilization", "greater than 0"),
        ({"dtype": "bf16"}, "dtype", "'auto', 'bfloat16', 'float16' or 'float32'"),
        ({"model": "Qwen/Qwen3-VL-8B-Instruct"}, "model", "absolute path"),
        ({"limit_mm_per_prompt": {"image": -1}}, "limit_mm_per_prompt", "0 or more"),
        ({"limit_mm_per_prompt": {"audio": 1}}, "limit_mm_per_prompt", "'image' or 'video'"),
    ],
)
def test_bad_engine_args_are_errors_on_their_line(
    tmp_path: Path, changes: dict[str, Any], key: str, message: str
) -> None:
    path = write_args(tmp_path, **changes)
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if f'"{key}"' in text)

    findings = check_engine_args(path)

    assert [(f.severity, f.line) for f in findings] == [(Severity.ERROR, line)]
    assert message in findings[0].message
    assert findings[0].format().startswith(f"{path}:{line}: error: ")


def test_broken_json_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    path.write_text('{\n  "model": "/models/x",\n  "dtype": bfloat16\n}\n')

    (finding,) = check_engine_args(path)

    assert (finding.severity, finding.line) == (Severity.ERROR, 3)


def test_a_model_path_missing_here_is_only_a_warning(tmp_path: Path) -> None:
    path = write_args(tmp_path, model="/models/not-on-this-machine")

    (finding,) = check_engine_args(path)

    assert finding.severity is Severity.WARNING
    assert "must exist in the Triton container" in finding.message


def _vllm_model(tmp_path: Path, **params: Any) -> Path:
    package(tmp_path, BACKEND, tmp_path / "repo", MODEL, vllm_params(tmp_path, **params))
    return tmp_path / "repo" / "qwen3-vl-v1"


def _edit_config(model_dir: Path, edit: Any) -> None:
    path = model_dir / "config.pbtxt"
    config = parse_config(path.read_text())
    edit(config)
    path.write_text(str(config))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: setattr(c.model_transaction_policy, "decoupled", False), "decoupled"),
        (lambda c: setattr(c, "max_batch_size", 8), "max_batch_size 0"),
        (lambda c: setattr(c.instance_group[0], "kind", pb.ModelInstanceGroup.KIND_CPU), "not KIND_CPU"),
        (lambda c: c.ClearField("output"), "text_output"),
    ],
)
def test_config_rules_of_the_vllm_backend(tmp_path: Path, edit: Any, message: str) -> None:
    model_dir = _vllm_model(tmp_path)
    _edit_config(model_dir, edit)

    assert any(message in text for text in errors(check_vllm_model(model_dir)))


def test_multi_gpu_args_on_kind_gpu_are_refused(tmp_path: Path) -> None:
    model_dir = _vllm_model(tmp_path)
    args_path = model_dir / "1" / "model.json"
    args = json.loads(args_path.read_text())
    args_path.write_text(json.dumps({**args, "tensor_parallel_size": 2}, indent=2))

    assert any("KIND_MODEL" in text for text in errors(check_vllm_model(model_dir)))


def test_limits_that_disagree_with_the_engine_are_warnings(tmp_path: Path) -> None:
    model_dir = _vllm_model(tmp_path)
    args_path = model_dir / "1" / "model.json"
    args = json.loads(args_path.read_text())
    args_path.write_text(json.dumps({**args, "max_model_len": 1024, "limit_mm_per_prompt": {"image": 1}}, indent=2))

    findings = check_vllm_model(model_dir)

    assert errors(findings) == []
    assert sorted(f.message.split(" ")[0] for f in findings) == ["config.pbtxt", "max_model_len"]


def test_a_version_without_engine_args_is_an_error(tmp_path: Path) -> None:
    model_dir = _vllm_model(tmp_path)
    (model_dir / "1" / "model.json").unlink()

    assert any("cannot read" in text for text in errors(check_vllm_model(model_dir)))


def test_python_backend_models_are_left_to_check_config(fake_checkpoint: Path, tmp_path: Path) -> None:
    package(fake_checkpoint, BACKEND, tmp_path / "repo", MODEL, serving_params())

    assert check_vllm_paths([tmp_path / "repo"]) == []


def test_an_auto_instance_count_is_one_engine_per_gpu(tmp_path: Path) -> None:
    result = package(tmp_path, BACKEND, tmp_path / "repo", MODEL, vllm_params(tmp_path, instance_count="auto"))

    [group] = parse_config((tmp_path / "repo" / "qwen3-vl-v1" / "config.pbtxt").read_text()).instance_group
    assert (group.count, group.kind, result.instance_count) == (1, pb.ModelInstanceGroup.KIND_GPU, 1)
