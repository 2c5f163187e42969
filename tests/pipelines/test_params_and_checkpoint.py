"""Params fail at load with the key's name; checkpoint checks name the path and what is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.checkpoint import resolve_source
from core.params import load_group
from core.quantization import QuantizeParams
from core.stage import StageError


def test_unknown_quantize_method_lists_the_valid_ones(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("quantize:\n  method: gptq\n  skip_modules: []\n")
    with pytest.raises(StageError) as err:
        load_group("quantize", QuantizeParams, params)
    assert "quantize.method" in str(err.value)
    assert "none, bnb-int8, bnb-nf4" in str(err.value)


def test_unknown_key_is_refused_with_its_name(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("quantize:\n  method: none\n  skip_module: []\n")
    with pytest.raises(StageError, match=r"quantize\.skip_module"):
        load_group("quantize", QuantizeParams, params)


def test_missing_group_is_named(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("model: {source: x}\n")
    with pytest.raises(StageError, match="missing the `quantize` group"):
        load_group("quantize", QuantizeParams, params)


def test_missing_source_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(StageError) as err:
        resolve_source(str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(err.value)
    assert "does not exist" in str(err.value)


def test_folder_that_is_not_qwen3_vl_lists_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(StageError) as err:
        resolve_source(str(tmp_path))
    message = str(err.value)
    assert str(tmp_path) in message
    assert "weights" in message and "tokenizer" in message and "image processor" in message
    assert "'llama'" in message


def test_default_source_is_the_committed_checkpoint(tiny_checkpoint: Path) -> None:
    import yaml

    from tests.conftest import ROOT
    from tiny_model import is_builtin_checkpoint

    source = yaml.safe_load((ROOT / "params.yaml").read_text())["model"]["source"]
    assert is_builtin_checkpoint(ROOT / source)
    assert resolve_source(str(ROOT / source)) == ROOT / source
