"""``python -m bench`` (``make bench``): every figure the README claims, measured here and now.

A full run writes bench/results.json, bench/REPORT.md and PNG plots, refreshes the README's Figures
section, and prints one JSON line last. ``--parts`` runs some parts only (``make bench-triton``,
``make bench-gateway``) and writes nothing under bench/. A part that fails is named with its reason on
stderr, the parts that need it are skipped, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import hop, measure, report, ttft
from bench import triton as direct_triton
from bench.requests import chat_body, triton_request
from core.processes import exit_on_sigterm
from demo.scratch import scratch_stack
from registry.events import Actor
from serving.stack import ROOT

log = logging.getLogger("bench")

#: Every part, in the order a full run measures them; the stack parts share one scratch stack.
PARTS = ("pipeline", "triton", "hop", "overhead", "inprocess", "quantization", "rollback", "ttft")
STACK_PARTS = ("overhead", "ttft", "inprocess", "quantization", "rollback")


def machine() -> dict[str, Any]:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor() or "unknown",
    )  # fmt: skip
    import torch

    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "started": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def load_average() -> float:
    """The 1-minute load average: how busy the machine was (with this run's own work) as a part started."""
    return float(Path("/proc/loadavg").read_text().split()[0])


class Runner:
    """Runs parts in order, records each one's result or failure, and skips what needs a failed part."""

    def __init__(self, results: dict[str, Any], workdir: Path) -> None:
        self.results = results
        self.failed: dict[str, str] = results.setdefault("failed", {})
        self.load = results.setdefault("load_average", {})
        self.workdir = workdir

    def part(self, name: str, measure_it: Callable[[], Any], needs: tuple[str, ...] = ()) -> None:
        missing = [need for need in needs if need in self.failed]
        if missing:
            self.fail(name, f"not run: it needs the {', '.join(missing)} part, which failed")
            return
        log.info("part %s", name)
        self.load[name] = load_average()
        try:
            self.results[name] = measure_it()
        except Exception as exc:  # a part's failure is reported by name, and the other parts still run
            (self.workdir / f"{name}.traceback").write_text(traceback.format_exc())
            self.fail(name, f"{type(exc).__name__}: {exc}".strip())

    def fail(self, name: str, why: str) -> None:
        self.failed[name] = why
        print(f"make bench: part '{name}' failed: {why.splitlines()[0][:2000]}", file=sys.stderr)


def _served_build(copy: Path | None, workdir: Path) -> Path:
    """The model folder the Triton parts serve: the fresh copy's validated build, else this checkout's, else
    the tiny checkpoint packaged with params.yaml's package group."""
    from core.contract import PackageParams
    from core.names import served_model_name
    from core.params import RegistryParams, load_group
    from serving.triton.packaging import package

    params = load_group("package", PackageParams, ROOT / "params.yaml")
    name = served_model_name(load_group("registry", RegistryParams, ROOT / "params.yaml").model_name, params.version)
    for root in (copy, ROOT):
        if root is not None and (root / "triton-models" / name / "config.pbtxt").is_file():
            return root / "triton-models" / name
    from tiny_model import CHECKPOINT_DIR

    repository = workdir / "packaged"
    result = package(CHECKPOINT_DIR, ROOT / "serving/backend/model.py", repository, "qwen3-vl", params)
    return repository / result.triton_model


def triton_part(model_dir: Path, workdir: Path, rounds: int, seconds: float) -> dict[str, Any]:
    """The served build alone in its own Triton: concurrency 1 vs 8, Triton's statistics, memory per instance."""
    from serving.triton.launcher import TritonServer, free_ports
    from serving.triton.settings import TritonSettings

    repository = workdir / "triton-repo"
    repository.mkdir(parents=True, exist_ok=True)
    link = repository / model_dir.name
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(model_dir.resolve(), target_is_directory=True)
    count, kind = direct_triton.served_instances(model_dir)
    http, grpc, metrics = free_ports(3)
    settings = TritonSettings(http_port=http, grpc_port=grpc, metrics_port=metrics, exit_timeout_secs=1)
    with TritonServer(repository, settings, run_dir=workdir / "triton-run", load_models=[model_dir.name]) as server:
        figures = direct_triton.direct(server.http_url, model_dir.name, rounds, seconds)
        if server.pid is None:
            raise RuntimeError("Triton has no pid")
        memory = direct_triton.instance_memory(server.pid, model_dir.name)
    if len(memory) != count:
        raise RuntimeError(
            f"found {len(memory)} backend stubs of {model_dir.name}, but its config has {count} instances"
        )
    return {"model": model_dir.name, "instances": count, "kind": kind, "memory": memory, **figures,
            "rounds": rounds, "seconds_per_run": seconds}  # fmt: skip


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


def run_parts(parts: tuple[str, ...], args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine(), "parts": list(parts)}
    runner = Runner(results, workdir)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    copy = workdir / "copy"
    if "pipeline" in parts:
        runner.part("pipeline", lambda: measure.repro(measure.copy_repository(copy), env))
    have_copy = "pipeline" in parts and "pipeline" not in runner.failed
    if "triton" in parts:
        runner.part(
            "triton",
            lambda: triton_part(
                _served_build(copy if have_copy else None, workdir), workdir, args.rounds, args.seconds
            ),
        )
    if "hop" in parts:
        runner.part(
            "hop", lambda: hop.measure(workdir / "hop", args.rounds, args.seconds, chat_body(), triton_request())
        )
    stack_parts = [part for part in STACK_PARTS if part in parts]
    if stack_parts:
        _stack_parts(runner, stack_parts, args, workdir, copy if have_copy else ROOT, env)
    return results


def _stack_parts(
    runner: Runner, parts: list[str], args: argparse.Namespace, workdir: Path, build: Path, env: dict[str, str]
) -> None:
    needs = ("pipeline",) if "pipeline" in runner.results["parts"] else ()
    if any(need in runner.failed for need in needs):
        for part in parts:
            runner.fail(part, "not run: it needs the pipeline part, which failed")
        return
    model_dir = build / "triton-models" / "qwen3-vl-v1"
    try:
        # The edge's per-client rate limit is a defence, not a speed: the load generator is one client.
        unlimited = {"nginx": {"EDGE_RATE_PER_S": "1000000", "EDGE_BURST": "1000000"}}
        with scratch_stack(workdir / "stack", Actor(name="make bench"), runner.results.setdefault("stack", {}),
                           build, unlimited) as stack:  # fmt: skip
            if "overhead" in parts:
                runner.part("overhead", lambda: measure.overhead(stack, args.rounds, args.seconds, args.paired_seconds))
            if "ttft" in parts:
                runner.part("ttft", lambda: ttft.measure(stack, args.rounds, args.seconds))
            if "inprocess" in parts:
                rounds = max(2, args.rounds - 1)
                runner.part("inprocess", lambda: measure.inprocess(stack, model_dir, rounds, args.seconds))
            if "quantization" in parts and not needs:
                runner.fail("quantization", "not run: it needs the pipeline part (dvc exp run happens in its copy)")
            elif "quantization" in parts:
                runner.part("quantization", lambda: _quantization(stack, build, env, workdir, args.seconds))
            if "rollback" in parts:
                # The canary is the copy's bnb-int8 build (the quantization part leaves it there).
                runner.part("rollback", lambda: measure.rollouts(stack, build, args.rollbacks), needs=("quantization",))
    except Exception as exc:  # the stack itself did not start or stop: every part not yet measured failed
        why = f"the serving stack failed: {type(exc).__name__}: {exc}"
        (workdir / "stack.traceback").write_text(traceback.format_exc())
        for part in parts:
            if part not in runner.results and part not in runner.failed:
                runner.fail(part, why)


def _quantization(stack: Any, build: Path, env: dict[str, str], workdir: Path, seconds: float) -> dict[str, Any]:
    served = measure.quantization_latency(stack, _quantized_builds(workdir), 2, seconds / 2)
    table = measure.quantization_table(build, env)
    return {"served_p50_ms": served, "pipeline": table}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / ".run" / "bench")
    parser.add_argument("--out", type=Path, default=ROOT / "bench")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of: {', '.join(PARTS)}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per load run")
    parser.add_argument(
        "--paired-seconds",
        type=float,
        default=240.0,
        help="seconds of requests taken in turn by direct Triton and the gateway, for what the gateway adds at 1 "
        "(why 240: docs/performance.md, `make bench`)",
    )
    parser.add_argument("--rollbacks", type=int, default=5)
    parser.add_argument("--no-readme", action="store_true", help="do not refresh the README's Figures section")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: rewrite the report, plots and README figures from OUT/results.json",
    )
    args = parser.parse_args(argv)
    parts = tuple(part.strip() for part in args.parts.split(",") if part.strip())
    if unknown := sorted(set(parts) - set(PARTS)):
        parser.error(f"unknown part(s) {', '.join(unknown)}; the parts are {', '.join(PARTS)}")
    if args.report_only:
        results = json.loads((args.out / "results.json").read_text())
        return _report(results, args.out, readme=not args.no_readme)
    exit_on_sigterm()  # a stopped benchmark stops its scratch stack
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "mlflow", "alembic", "urllib3", "bitsandbytes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started = time.monotonic()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    results = run_parts(parts, args, workdir)
    results["bench_s"] = round(time.monotonic() - started, 1)
    if set(parts) != set(PARTS):
        (workdir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        print(json.dumps({part: results.get(part) for part in parts} | {"failed": results["failed"]}, sort_keys=True))
        return 1 if results["failed"] else 0
    status = _report(results, args.out, readme=not args.no_readme)
    return 1 if results["failed"] else status


def _report(results: dict[str, Any], out: Path, *, readme: bool) -> int:
    results["sections"] = report.collect_sections(out)
    summary = report.summarize(results)
    results["summary"] = summary
    report.write(results, out)
    if readme:
        report.update_readme(results, ROOT / "README.md")
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
