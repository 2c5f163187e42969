"""Typed params groups: bad values fail at load with the key's name."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.names import PlainName
from core.stage import StageError

PARAMS_FILE = Path("params.yaml")


class ParamsGroup(BaseModel):
    """A params.yaml group: unknown keys are errors, values are read-only."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelParams(ParamsGroup):
    source: str = Field(min_length=1)
    device: Literal["auto", "cpu", "cuda"]
    dtype: Literal["auto", "float32", "bfloat16", "float16"]


class EvalParams(ParamsGroup):
    batch_size: int = Field(gt=0)
    max_new_tokens: int = Field(gt=0)


G = TypeVar("G", bound=BaseModel)


def load_group(group: str, model: type[G], path: Path = PARAMS_FILE) -> G:
    """Read one top-level group of ``params.yaml`` into its typed model."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise StageError(f"{path}: not found; run from the project root") from exc
    if group not in raw:
        raise StageError(f"{path}: missing the `{group}` group")
    try:
        return model.model_validate(raw[group])
    except ValidationError as exc:
        problems = "; ".join(f"{group}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise StageError(f"{path}: {problems}") from exc


class RegistryParams(ParamsGroup):
    """The ``registry`` group: the names every room shares (Triton models, MLflow model and experiment)."""

    model_name: PlainName
    experiment: PlainName
