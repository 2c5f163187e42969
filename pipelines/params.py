"""Typed params groups: bad values fail at load with the key's name."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipelines.errors import StageError
from pipelines.tiny_model.shapes import TRAIN_SEED

PARAMS_FILE = Path("params.yaml")

QuantizeMethod = Literal["none", "bnb-int8", "bnb-nf4"]
QUANTIZE_METHODS: tuple[str, ...] = ("none", "bnb-int8", "bnb-nf4")


class ParamsGroup(BaseModel):
    """A params.yaml group: unknown keys are errors, values are read-only."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelParams(ParamsGroup):
    source: str = Field(min_length=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"


class GoldenParams(ParamsGroup):
    seed: int
    size: int = Field(gt=0)
    path: Path | None = None
    categories: list[str] = Field(min_length=1)
    min_rows: int = Field(ge=1)
    min_per_category: int = Field(ge=0)

    @field_validator("seed")
    @classmethod
    def _not_the_training_seed(cls, seed: int) -> int:
        if seed == TRAIN_SEED:
            raise ValueError(f"must differ from the tiny model's training seed ({TRAIN_SEED})")
        return seed


class EvalParams(ParamsGroup):
    batch_size: int = Field(gt=0)
    max_new_tokens: int = Field(gt=0)


class QuantizeParams(ParamsGroup):
    method: str
    skip_modules: list[str] = Field(default_factory=list)

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        if method not in QUANTIZE_METHODS:
            raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(QUANTIZE_METHODS)}")
        return method


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
