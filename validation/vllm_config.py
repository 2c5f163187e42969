"""Check models served by Triton's vLLM backend offline: ``<version>/model.json`` and its ``config.pbtxt``.

The vLLM backend hands ``model.json`` to vLLM's ``AsyncEngineArgs`` as is, so an unknown key, a
wrong type or a value out of range only surfaces when a GPU server loads the model. Here the file is
checked against the engine arguments the package stage writes (``core.contract.VllmEngineArgs``:
known keys only, types, ranges) and against the rules the backend applies to its ``config.pbtxt``.
Models of other backends are left to ``check-config``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from pydantic import ValidationError
from tritonclient.grpc import model_config_pb2 as pb

from core.contract import (
    CONFIG_FILE,
    PARAM_MAX_IMAGES,
    PARAM_MAX_NEW_TOKENS,
    PARAM_MAX_PROMPT_TOKENS,
    VLLM_BACKEND,
    VLLM_ENGINE_ARGS_FILE,
    VLLM_INPUT_TEXT,
    VLLM_OUTPUT_TEXT,
    VllmEngineArgs,
    parse_config,
)
from validation.findings import Finding, Severity
from validation.repo import config_paths

RULE = "vllm"


def engine_args_schema() -> dict[str, Any]:
    """The JSON schema of ``model.json`` as this project writes it (no other keys allowed)."""
    return VllmEngineArgs.model_json_schema()


def check_vllm_paths(paths: Iterable[Path]) -> list[Finding]:
    """Findings for every vLLM-backend model under ``paths`` (config files, model folders or repositories)."""
    findings: list[Finding] = []
    seen: set[Path] = set()
    for path in paths:
        found = config_paths(path)
        if isinstance(found, Finding):
            continue  # check-config reports a path that names no model
        for config_path in found:
            folder = config_path.parent.resolve()
            if folder not in seen:
                seen.add(folder)
                findings.extend(check_vllm_model(config_path.parent))
    return sorted(findings, key=lambda f: (str(f.path), f.line, f.column))


def check_vllm_model(model_dir: Path) -> list[Finding]:
    """Findings for one model folder; none when it is not a vLLM-backend model (or has no readable config)."""
    config_path = model_dir / CONFIG_FILE
    try:
        config = parse_config(config_path.read_text())
    except (OSError, ValueError, text_format.ParseError):  # ValueError: not UTF-8, or a bare protobuf refusal
        return []  # check-config reports a missing, unreadable or unparsable config
    if config.backend != VLLM_BACKEND:
        return []
    findings = _check_config(config_path, config)
    versions = list(config.version_policy.specific.versions) or sorted(
        int(sub.name) for sub in model_dir.iterdir() if sub.is_dir() and sub.name.isascii() and sub.name.isdigit()
    )
    if not versions:
        findings.append(_error(model_dir, 0, f"{model_dir}: no version folder holds a {VLLM_ENGINE_ARGS_FILE}"))
    for version in versions:
        findings.extend(check_engine_args(model_dir / str(version) / VLLM_ENGINE_ARGS_FILE, config))
    return findings


def check_engine_args(path: Path, config: pb.ModelConfig | None = None) -> list[Finding]:
    """Findings for one ``model.json``; with ``config``, also how it fits that model's ``config.pbtxt``."""
    try:
        text = path.read_text()
    except OSError as exc:
        return [_error(path, 0, f"cannot read the vLLM engine arguments: {exc.strerror or exc}")]
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        return [_error(path, exc.lineno, f"not JSON: {exc.msg} (column {exc.colno})")]
    if not isinstance(raw, dict):
        return [_error(path, 1, "must be one JSON object of vLLM engine arguments")]
    try:
        args = VllmEngineArgs.model_validate(raw, strict=True)
    except ValidationError as exc:
        return [_schema_finding(path, text, error) for error in exc.errors()]
    findings: list[Finding] = []
    if not Path(args.model).exists():
        findings.append(
            _warning(
                path,
                _line_of(text, "model"),
                f"model {args.model} does not exist on this machine; it must exist in the Triton container",
            )
        )
    if config is not None:
        findings.extend(_check_fit(path, text, args, config))
    return findings


def _check_config(path: Path, config: pb.ModelConfig) -> list[Finding]:
    """The rules the vLLM backend applies to its own config (it asserts or refuses at load)."""
    findings: list[Finding] = []
    if not config.model_transaction_policy.decoupled:
        findings.append(_error(path, 0, "the vLLM backend needs `model_transaction_policy { decoupled: true }`"))
    if config.max_batch_size != 0:
        findings.append(
            _error(path, 0, f"max_batch_size {config.max_batch_size}: vLLM batches itself; set max_batch_size 0")
        )
    inputs = {tensor.name for tensor in config.input}
    outputs = {tensor.name for tensor in config.output}
    if VLLM_INPUT_TEXT not in inputs:
        findings.append(_error(path, 0, f"the vLLM backend reads input `{VLLM_INPUT_TEXT}`; declare it"))
    if VLLM_OUTPUT_TEXT not in outputs:
        findings.append(_error(path, 0, f"the vLLM backend answers output `{VLLM_OUTPUT_TEXT}`; declare it"))
    for group in config.instance_group:
        if group.kind == pb.ModelInstanceGroup.KIND_CPU:
            findings.append(_error(path, 0, "the vLLM backend runs on GPUs: use KIND_GPU or KIND_MODEL, not KIND_CPU"))
    return findings


def _check_fit(path: Path, text: str, args: VllmEngineArgs, config: pb.ModelConfig) -> list[Finding]:
    findings: list[Finding] = []
    kinds = {group.kind for group in config.instance_group}
    if args.tensor_parallel_size > 1 and pb.ModelInstanceGroup.KIND_GPU in kinds:
        findings.append(
            _error(
                path,
                _line_of(text, "tensor_parallel_size"),
                f"tensor_parallel_size {args.tensor_parallel_size} with KIND_GPU: the backend refuses a multi-GPU "
                "engine on KIND_GPU; use KIND_MODEL",
            )
        )
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    images = _int(parameters.get(PARAM_MAX_IMAGES))
    allowed = args.limit_mm_per_prompt.get("image", 0)
    if images is not None and images > allowed:
        findings.append(
            _warning(
                path,
                _line_of(text, "limit_mm_per_prompt"),
                f"config.pbtxt lets a request carry {images} images ({PARAM_MAX_IMAGES}) but vLLM accepts {allowed}",
            )
        )
    prompt, answer = _int(parameters.get(PARAM_MAX_PROMPT_TOKENS)), _int(parameters.get(PARAM_MAX_NEW_TOKENS))
    if prompt is not None and answer is not None and args.max_model_len < prompt + answer:
        findings.append(
            _warning(
                path,
                _line_of(text, "max_model_len"),
                f"max_model_len {args.max_model_len} is under {PARAM_MAX_PROMPT_TOKENS} + {PARAM_MAX_NEW_TOKENS} "
                f"({prompt} + {answer}): the longest allowed conversation would be refused",
            )
        )
    return findings


def _schema_finding(path: Path, text: str, error: Any) -> Finding:
    location = [str(part) for part in error["loc"]]
    key = location[0] if location else ""
    where = ".".join(location) or "(top level)"
    if error["type"] == "extra_forbidden":
        message = f"unknown engine argument `{where}` (known: {', '.join(sorted(VllmEngineArgs.model_fields))})"
    else:
        message = f"`{where}`: {error['msg']} (got {error.get('input')!r})"
    return _error(path, _line_of(text, key) if key else 0, message)


def _line_of(text: str, key: str) -> int:
    """The 1-based line where ``"key"`` first appears, or 0."""
    needle = json.dumps(key)
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    return 0


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _error(path: Path, line: int, message: str) -> Finding:
    return Finding(path, line, 0, Severity.ERROR, RULE, message)


def _warning(path: Path, line: int, message: str) -> Finding:
    return Finding(path, line, 0, Severity.WARNING, RULE, message)
