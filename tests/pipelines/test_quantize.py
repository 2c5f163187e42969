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


_QUANTIZE = (
    "import sys; from pathlib import Path; from core.quantization import QuantizeParams, quantize_checkpoint; "
    "quantize_checkpoint(Path(sys.argv[1]), Path(sys.argv[2]), "
    "QuantizeParams(method='bnb-nf4', skip_modules=['model.visual', 'lm_head']), 'cpu')"
)


def test_the_saved_checkpoint_is_the_same_bytes_whatever_the_shell_sets(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """`make` exports HF_HUB_OFFLINE=1, a plain shell does not; transformers wrote that into
    tokenizer_config.json (`"local_files_only": true` or `false`), so a fresh clone's `dvc repro` from
    a plain shell changed artifacts/quantized by one byte and reran everything after it."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    outputs = {}
    for label, offline in (("offline", {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}), ("online", {})):
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        env |= offline | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        out = tmp_path / label
        proc = subprocess.run(
            [sys.executable, "-c", _QUANTIZE, str(tiny_checkpoint), str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs[label] = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    assert sorted(outputs["offline"]) == sorted(outputs["online"])
    differ = [name for name in outputs["offline"] if outputs["offline"][name] != outputs["online"][name]]
    assert differ == [], f"these files depend on HF_HUB_OFFLINE: {differ}"
    assert json.loads(outputs["online"]["tokenizer_config.json"])["local_files_only"] is True
