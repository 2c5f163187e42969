"""The one naming rule for models: registered models, Triton models and the served per-version models.

A name becomes a folder (Triton's model repository), an MLflow registered-model name and part of URLs,
so it must be a plain, portable name: a letter or digit first, then letters, digits, ``_``, ``.`` or
``-``, at most 64 characters, never ``.``/``..``-like. Each served version is its own Triton model
named ``<model>-v<N>``.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

MODEL_NAME_RULE = "a letter or digit, then letters, digits, '_', '.' or '-' (at most 64 characters)"
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SERVED = re.compile(r"(?P<model>.+)-v(?P<version>[1-9][0-9]{0,8})")


def is_model_name(name: str) -> bool:
    """True when ``name`` follows the model-name rule."""
    return bool(_MODEL_NAME.fullmatch(name)) and ".." not in name


def check_model_name(name: str, what: str = "model name") -> str:
    """``name`` if it follows the rule; else ``ValueError`` naming ``what`` and the rule."""
    if not isinstance(name, str) or not is_model_name(name):
        raise ValueError(f"{what} {name!r} is not a plain name: use {MODEL_NAME_RULE}")
    return name


def served_model_name(model: str, version: int) -> str:
    """The Triton model that serves ``version`` of ``model``: ``qwen3-vl`` v7 is ``qwen3-vl-v7``."""
    check_model_name(model)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version {version!r} must be a positive integer")
    return f"{model}-v{version}"


def parse_served_name(name: str) -> tuple[str, int] | None:
    """``(model, version)`` for a served model name, or None when ``name`` is not one."""
    match = _SERVED.fullmatch(name)
    if match is None or not is_model_name(match["model"]):
        return None
    return match["model"], int(match["version"])


def _plain(name: str) -> str:
    return check_model_name(name, "name")


#: A pydantic field type for any name that follows the rule (registered models, experiments, Triton models).
PlainName = Annotated[str, AfterValidator(_plain)]
