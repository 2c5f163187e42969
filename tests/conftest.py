"""Shared fixtures: the committed tiny checkpoint and a small golden set made by the real stage code."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

# Tests run offline, single-threaded (two threads stall the tiny model's matmuls on 2 cores).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    from tiny_model import CHECKPOINT_DIR

    assert (CHECKPOINT_DIR / "config.json").is_file(), "the tiny checkpoint is missing: run `make tiny-model`"
    return CHECKPOINT_DIR


@pytest.fixture(scope="session")
def small_golden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 golden rows (20 per category) from the golden stage's own generator."""
    from pipelines.golden import ROWS_FILE, generate_rows

    out = tmp_path_factory.mktemp("golden")
    rows = generate_rows(seed=1729, size=60, out=out)
    import json

    (out / ROWS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def as_from_a_terminal() -> None:
    """``preexec_fn`` for a CLI that a test stops with Ctrl-C: SIGINT at its default, as a shell in a
    terminal leaves it. A suite started in the background (``cmd &``, nohup) ignores SIGINT, and a
    child inherits that, so Python would never raise KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
