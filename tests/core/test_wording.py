"""The accuracy change in one wording everywhere, from a module light enough for the gateway image."""

from __future__ import annotations

import ast
import sys

import pytest

from core.wording import accuracy_words, describe_drop, versus_base
from tests.conftest import ROOT


@pytest.mark.parametrize(
    ("drop", "words"),
    [
        (0.0033, "0.3 points lower"),
        (-0.01, "1.0 point higher"),
        (0.0004, "no change"),
        (-0.0004, "no change"),
        (0.0097, "1.0 point lower"),  # rounds to one point: singular
        (0.42, "42.0 points lower"),
    ],
)
def test_a_change_in_accuracy_in_words(drop: float, words: str) -> None:
    assert describe_drop(drop) == words


def test_against_the_base_model() -> None:
    assert versus_base(0.0033) == "0.3 points lower than the base model"
    assert versus_base(0.0) == "the same as the base model"
    assert accuracy_words(0.9833, 0.0033) == "accuracy 98.3% (0.3 points lower than the base model)"
    assert accuracy_words(0.9833, None) == "accuracy 98.3%"


def test_it_imports_only_the_standard_library() -> None:
    """The registry in the gateway image words figures with it; that image has no evaluation stack."""
    tree = ast.parse((ROOT / "core" / "wording.py").read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert imported - {"__future__"} <= set(sys.stdlib_module_names)
