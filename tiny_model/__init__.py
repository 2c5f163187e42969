"""The embedded default model: a tiny Qwen3-VL built, trained and shipped by this project."""

from pathlib import Path

_HERE = Path(__file__).resolve().parent
#: The committed, trained checkpoint (``make tiny-model`` regenerates it); ``model.source``'s default.
CHECKPOINT_DIR = _HERE / "checkpoint"
#: ``golden.path``'s default: the task generator, which makes the builtin golden set from a seed.
GENERATOR_FILE = _HERE / "shapes.py"


def is_builtin_checkpoint(source: Path) -> bool:
    """True when ``source`` is the embedded checkpoint (however the path is written)."""
    return source.expanduser().resolve() == CHECKPOINT_DIR


def is_builtin_generator(path: Path) -> bool:
    """True when ``path`` names the builtin golden-set generator rather than a user's set."""
    return path.expanduser().resolve() == GENERATOR_FILE
