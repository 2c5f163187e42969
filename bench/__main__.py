"""``python -m bench`` (``make bench``): every figure the README claims, measured here and now.

Writes bench/results.json, bench/REPORT.md and PNG plots, refreshes the README's Figures section,
and prints one JSON line last. About 8 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bench import measure, report
from core.processes import exit_on_sigterm
from demo.scratch import ScratchError, scratch_stack
from registry.events import Actor
from serving.stack import ROOT, StackError


def machine() -> dict[str, Any]:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor() or "unknown",
    )  # fmt: skip
    import torch

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def _quantized_builds(workdir: Path) -> dict[str, Path]:
    """The tiny checkpoint through the quantize stage's own code, once per method (for served latency)."""
    from core.quantization import QuantizeParams, quantize_checkpoint
    from tiny_model import CHECKPOINT_DIR

    builds = {}
    for method in ("none", "bnb-int8", "bnb-nf4"):
        out = workdir / "quantized" / method
        params = QuantizeParams(method=method, skip_modules=["model.visual", "lm_head"])
        quantize_checkpoint(CHECKPOINT_DIR, out, params, "cpu", "float32")
        builds[method] = out
    return builds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / ".run" / "bench")
    parser.add_argument("--out", type=Path, default=ROOT / "bench")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per load run")
    parser.add_argument("--rollbacks", type=int, default=5)
    parser.add_argument("--no-readme", action="store_true", help="do not refresh the README's Figures section")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: rewrite the report, plots and README figures from OUT/results.json",
    )
    args = parser.parse_args(argv)
    if args.report_only:
        return _report(json.loads((args.out / "results.json").read_text()), args.out, readme=not args.no_readme)
    exit_on_sigterm()  # a stopped benchmark stops its scratch stack
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "mlflow", "alembic", "urllib3", "bitsandbytes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started = time.monotonic()
    workdir = args.workdir.resolve()
    results: dict[str, Any] = {"machine": machine()}
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    try:
        logging.info("pipeline: a fresh copy's dvc repro, its no-op, and the other quantizations")
        copy = measure.copy_repository(workdir / "copy")
        results["pipeline"] = measure.pipeline(copy, env)
        builds = _quantized_builds(workdir)
        with scratch_stack(workdir / "stack", Actor(name="make bench"), results.setdefault("stack", {})) as stack:
            logging.info("gateway overhead: direct Triton vs gateway vs nginx + gateway")
            results["overhead"] = measure.overhead(stack, args.rounds, args.seconds)
            logging.info("Triton path vs transformers.generate in a FastAPI handler")
            results["inprocess"] = measure.inprocess(stack, max(2, args.rounds - 1), args.seconds)
            logging.info("served latency per quantization")
            results["quantization_p50_ms"] = measure.quantization_latency(stack, builds, 2, args.seconds / 2)
            logging.info("rollback: fault onset to canary weight 0")
            results["rollout"] = measure.rollouts(stack, copy, args.rollbacks)
    except (ScratchError, StackError, RuntimeError) as exc:
        print(f"make bench: {exc}", file=sys.stderr)
        return 1
    results["bench_s"] = round(time.monotonic() - started, 1)
    return _report(results, args.out, readme=not args.no_readme)


def _report(results: dict[str, Any], out: Path, *, readme: bool) -> int:
    summary = report.summarize(results)
    results["summary"] = summary
    report.write(results, out)
    if readme:
        report.update_readme(results, ROOT / "README.md")
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
