"""``make bench-triton`` end to end on a tiny run: its last line is the JSON summary CI reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.triton, pytest.mark.slow]


def test_bench_ends_with_a_sane_json_summary(tiny_checkpoint: Path) -> None:
    command = [sys.executable, "-m", "serving.triton.bench", "--checkpoint", str(tiny_checkpoint)]
    command += ["--requests", "6", "--seconds", "1", "--rounds", "1", "--concurrency", "4", "--queue-delay-us", "4000"]

    done = subprocess.run(
        command, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600
    )

    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    # One progress line per phase and round, then the summary.
    assert [line.split(":")[0] for line in lines[:-1]] == ["round 1 c1", "round 1 c8_batched", "round 1 c8_unbatched"]
    summary = json.loads(lines[-1])
    assert sorted(summary) == sorted(
        [
            "p50_ms",
            "p99_ms",
            "rps_c1",
            "rps_c8_batched",
            "rps_c8_unbatched",
            "batching_gain",
            "mean_batch_c8",
            "queue_delay_us",
        ]
    )
    assert 0 < summary["p50_ms"] <= summary["p99_ms"] < 60_000
    assert all(summary[key] > 0 for key in ("rps_c1", "rps_c8_batched", "rps_c8_unbatched"))
    assert summary["batching_gain"] == pytest.approx(summary["rps_c8_batched"] / summary["rps_c1"], rel=0.05)
    # Four closed-loop clients against a batcher that waits 4 ms: requests do share executions.
    assert 1 < summary["mean_batch_c8"] <= 4
    assert summary["queue_delay_us"] == 4000
