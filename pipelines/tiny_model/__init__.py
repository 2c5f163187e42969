"""The embedded default model: a tiny Qwen3-VL built, trained and shipped by this project."""

from pathlib import Path

#: The committed, trained checkpoint (``make tiny-model`` regenerates it).
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoint"
#: ``model.source`` value that selects the embedded checkpoint.
BUILTIN_SOURCE = "builtin:tiny-qwen3-vl"
