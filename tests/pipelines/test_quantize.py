"""Each quantize method loads, generates, and reloads to the same answers as in memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core import checkpoint
from core.evaluate import generate_answers, score
from core.golden import load_questions
from core.quantization import QuantizeParams, quantization_config, quantize_checkpoint
from core.stage import StageError

SKIP = ["model.visual", "lm_head"]


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path, small_golden: Path) -> list[str]:
    processor, model = checkpoint.load(tiny_checkpoint, "cpu")
    return generate_answers(model, processor, load_questions(small_golden), progress=False)


@pytest.mark.parametrize("method", ["none", "bnb-int8", "bnb-nf4"])
def test_method_reloads_to_the_in_memory_answers(
    method: str, tiny_checkpoint: Path, small_golden: Path, reference: list[str], tmp_path: Path
) -> None:
    questions = load_questions(small_golden)
    out = tmp_path / "q"
    quantize_checkpoint(tiny_checkpoint, out, QuantizeParams(method=method, skip_modules=SKIP), "cpu")

    config = json.loads((out / "config.json").read_text())
    assert ("quantization_config" in config) == (method != "none")
    processor, reloaded = checkpoint.load(out, "cpu")
    on_disk = generate_answers(reloaded, processor, questions, progress=False)

    # The same quantization, never saved: a checkpoint written after a forward pass would differ.
    cfg = quantization_config(method, SKIP, "float32")
    extra = {"quantization_config": cfg} if cfg is not None else {}
    processor, in_memory = checkpoint.load(tiny_checkpoint, "cpu", **extra)
    assert on_disk == generate_answers(in_memory, processor, questions, progress=False)

    base = score(questions, reference).accuracy
    assert score(questions, on_disk).accuracy >= base - 0.05
    assert base >= 0.9


def test_quantized_modules_skip_the_vision_tower_and_lm_head(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import bitsandbytes as bnb

    quantize_checkpoint(tiny_checkpoint, tmp_path / "q", QuantizeParams(method="bnb-nf4", skip_modules=SKIP), "cpu")
    _, model = checkpoint.load(tmp_path / "q", "cpu")
    kinds = {name: type(module) for name, module in model.named_modules()}
    assert kinds["lm_head"] is not bnb.nn.Linear4bit
    assert not any(k is bnb.nn.Linear4bit for n, k in kinds.items() if n.startswith("model.visual"))
    assert any(k is bnb.nn.Linear4bit for n, k in kinds.items() if n.startswith("model.language_model"))


def test_nf4_is_smaller_than_the_source(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from core.files import weights_bytes

    quantize_checkpoint(tiny_checkpoint, tmp_path / "q", QuantizeParams(method="bnb-nf4", skip_modules=SKIP), "cpu")
    assert weights_bytes(tmp_path / "q") < weights_bytes(tiny_checkpoint)


def test_bad_input_fails_without_touching_the_previous_output(tmp_path: Path) -> None:
    out = tmp_path / "q"
    out.mkdir()
    (out / "marker").write_text("previous good output")
    with pytest.raises(StageError, match="is not a Qwen3-VL checkpoint"):
        quantize_checkpoint(tmp_path / "missing", out, QuantizeParams(method="bnb-nf4", skip_modules=SKIP), "cpu")
    assert (out / "marker").read_text() == "previous good output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]


def test_unknown_method_lists_valid_ones() -> None:
    with pytest.raises(StageError, match="valid methods: none, bnb-int8, bnb-nf4"):
        quantization_config("awq", SKIP, "float32")
