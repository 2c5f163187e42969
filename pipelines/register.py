"""`register` stage: record a validated Triton model build in MLflow and make it the `candidate`.

Reads the upstream contract (params, dvc.lock, stage metrics, the packaged Triton model folder),
refuses a build whose validation did not pass or whose files are not the ones validate served, and
hands the rest to ``registry.publish``. Writes ``register.json`` with only what is the same on every
machine for the same registry state (registered model, version, alias, served digest).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import subprocess
from pathlib import Path
from typing import Any, TypeVar

import yaml
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, ConfigDict, ValidationError

from core.contract import CONFIG_FILE
from core.files import write_json
from core.manifest import manifest_digest, model_digests
from core.stage import StageError, run_stage
from core.wording import accuracy_words
from registry.card import evaluation_set, signature_of
from registry.errors import NotValidatedError, RegistryError
from registry.events import Actor
from registry.publish import Candidate, Lineage, Registration, Validation, publish
from registry.settings import RegistrySettings
from registry.store import Store

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
#: register.json: the same bytes on every machine for the same registry state (no run id, no times).
REGISTER_JSON_FIELDS = {"registered_model", "version", "alias", "served_digest"}


class RegisterInputs(BaseModel):
    """Every path the stage reads, as given in dvc.yaml."""

    model_config = ConfigDict(frozen=True)

    params: Path
    lock: Path
    validate_metrics: Path
    package_metrics: Path
    quantize_metrics: Path
    other_metrics: tuple[Path, ...] = ()
    triton_repo: Path
    #: The golden set validate judged on (logged as the run's evaluation dataset); None logs none.
    golden: Path | None = None


class _ValidateMetrics(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    version: int
    # Absent from a failed verdict written before anything was served (a config error, say).
    served_digest: str | None = None
    accuracy: float
    reference_accuracy: float
    drop: float
    passed: bool
    config_errors: int | list[Any] = 0
    questions: int | None = None


class _PackageMetrics(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    triton_model: str
    version: int
    bytes: int


class _QuantizeMetrics(BaseModel):
    model_config = ConfigDict(extra="allow")
    method: str


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise StageError(f"{path}: not found; run the stage that writes it (`dvc repro`)") from exc
    except json.JSONDecodeError as exc:
        raise StageError(f"{path}: not valid JSON ({exc}); rerun the stage that writes it") from exc
    if not isinstance(data, dict):
        raise StageError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _typed(path: Path, model: type[M]) -> M:
    try:
        return model.model_validate(_read_json(path))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise StageError(f"{path}: {problems}") from exc


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted keys; lists and scalars are leaves."""
    if not isinstance(data, dict):
        return {prefix: data} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def split_metrics(stage: str, data: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """Numbers become MLflow metrics; anything else (method names, file lists) becomes a param."""
    numbers: dict[str, float] = {}
    others: dict[str, str] = {}
    for key, value in flatten(data, stage).items():
        if isinstance(value, bool | int | float):
            numbers[key] = float(value)
        else:
            others[f"metrics.{key}"] = _as_text(value)
    return numbers, others


def params_digest(path: Path) -> str:
    """sha256 of the params' values (parsed, keys sorted): the same settings give the same digest
    however the file is laid out (``dvc exp run -S`` rewrites it without its comments)."""
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise StageError(f"{path}: not found; run the pipeline with `dvc repro`, which writes it") from exc
    except yaml.YAMLError as exc:
        raise StageError(f"{path}: not valid YAML ({exc})") from exc
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def sha256_of(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError as exc:
        raise StageError(f"{path}: not found; run the pipeline with `dvc repro`, which writes it") from exc


def git_state(folder: Path) -> tuple[str, bool]:
    """HEAD commit and whether tracked files differ from it; ("unknown", True) outside git."""

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=False)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        log.warning("%s is not in a git repository with a commit; lineage records commit 'unknown'", folder)
        return "unknown", True
    return head.stdout.strip(), bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())


def _failure_reason(metrics: _ValidateMetrics) -> str:
    reasons = [f"{accuracy_words(metrics.accuracy, metrics.drop)}, base {metrics.reference_accuracy:.1%}"]
    if metrics.config_errors:
        reasons.append(f"config errors: {metrics.config_errors}")
    extra = metrics.model_extra or {}
    reasons += [f"{key}: {extra[key]}" for key in ("reason", "reasons", "failures") if extra.get(key)]
    return "; ".join(reasons)


def build_candidate(inputs: RegisterInputs) -> Candidate:
    """Read and check the upstream contract; refuse (NotValidatedError) a version that failed validation."""
    validate = _typed(inputs.validate_metrics, _ValidateMetrics)
    package = _typed(inputs.package_metrics, _PackageMetrics)
    quantize = _typed(inputs.quantize_metrics, _QuantizeMetrics)
    if (validate.model, validate.version) != (package.triton_model, package.version):
        raise NotValidatedError(
            f"{inputs.validate_metrics} judges {validate.model} v{validate.version}, but {inputs.package_metrics} "
            f"packaged {package.triton_model} v{package.version}; rerun `dvc repro` so validate sees this build"
        )
    if not validate.passed:
        raise NotValidatedError(
            f"{inputs.validate_metrics} says validation did not pass: {_failure_reason(validate)}. "
            "Nothing was registered; fix the cause and rerun `dvc repro`."
        )
    model_dir = inputs.triton_repo / package.triton_model
    version_dir = model_dir / str(package.version)
    for needed in (model_dir / "config.pbtxt", version_dir):
        if not needed.exists():
            raise StageError(f"{needed}: not found, but {inputs.package_metrics} says it was packaged")
    files = model_digests(model_dir, version_dir.name)
    if (digest := manifest_digest(files)) != validate.served_digest:
        raise NotValidatedError(
            f"{model_dir}: its files (digest {digest}) differ from the ones validate served "
            f"(served_digest {validate.served_digest} in {inputs.validate_metrics}); they changed after "
            "validation. Nothing was registered; rerun `dvc repro` so validate judges these files."
        )
    raw_params = yaml.safe_load(inputs.params.read_text()) if inputs.params.exists() else {}
    params = {key: _as_text(value) for key, value in flatten(raw_params or {}).items()}
    metrics: dict[str, float] = {}
    for path in (inputs.validate_metrics, inputs.package_metrics, inputs.quantize_metrics, *inputs.other_metrics):
        numbers, others = split_metrics(path.stem, _read_json(path))
        metrics.update(numbers)
        params.update(others)
    commit, dirty = git_state(inputs.params.resolve().parent)
    return Candidate(
        package_model=package.triton_model,
        package_version=str(package.version),
        model_dir=model_dir,
        version_dir=version_dir,
        files=files,
        served_digest=validate.served_digest,
        size_bytes=package.bytes,
        quantization=quantize.method,
        lineage=Lineage(
            commit=commit,
            dirty=dirty,
            dvc_lock_sha256=sha256_of(inputs.lock),
            params_sha256=params_digest(inputs.params),
        ),
        validation=Validation(passed=True, accuracy=validate.accuracy, drop=validate.drop, reason="passed"),
        params=params,
        metrics=metrics,
        signature=signature_of(model_dir / CONFIG_FILE),
        evaluation=evaluation_set(inputs.golden, validate.questions) if inputs.golden is not None else None,
    )


def register(inputs: RegisterInputs, settings: RegistrySettings, actor: Actor) -> Registration:
    """The stage: check the inputs, then log, register and alias the version in MLflow."""
    candidate = build_candidate(inputs)
    return publish(Store(settings), candidate, actor)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--lock", type=Path, required=True, help="dvc.lock (read for its digest only)")
    parser.add_argument("--validate", type=Path, required=True, help="validate stage metrics JSON")
    parser.add_argument("--package", type=Path, required=True, help="package stage metrics JSON")
    parser.add_argument("--quantize", type=Path, required=True, help="quantize stage metrics JSON")
    parser.add_argument("--metrics", type=Path, nargs="*", default=[], help="other stages' metrics to log")
    parser.add_argument("--triton-repo", type=Path, required=True)
    parser.add_argument("--golden", type=Path, required=True, help="the golden set folder validate judged on")
    parser.add_argument("--out", type=Path, required=True, help="where to write register.json")
    args = parser.parse_args(argv)
    inputs = RegisterInputs(
        params=args.params,
        lock=args.lock,
        validate_metrics=args.validate,
        package_metrics=args.package,
        quantize_metrics=args.quantize,
        other_metrics=tuple(args.metrics),
        triton_repo=args.triton_repo,
        golden=args.golden,
    )

    def body() -> str:
        try:
            settings = RegistrySettings()
        except ValidationError as exc:
            raise StageError(f"registry settings (REGISTRY_* / MLFLOW_TRACKING_URI): {exc}") from exc
        try:
            result = register(inputs, settings, Actor.from_env())
        except RegistryError as exc:
            raise StageError(str(exc)) from exc
        except MlflowException as exc:
            raise StageError(
                f"MLflow at {settings.display_uri} failed: {exc.message}. Check MLFLOW_TRACKING_URI "
                "(unset means the project's sqlite store) and that the server is up (`make mlflow`)."
            ) from exc
        write_json(args.out, result.model_dump(include=REGISTER_JSON_FIELDS))
        return f"{result.registered_model} v{result.version} (run {result.run_id}) is the {result.alias}"

    return run_stage("register", body)


if __name__ == "__main__":
    raise SystemExit(main())
