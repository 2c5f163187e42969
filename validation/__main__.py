"""``python -m validation <check> ...``: run one validation check, print findings, exit 1 on errors.

Each subcommand is a ``_add_<name>`` function registered in ``_SUBCOMMANDS``; it adds its parser
and sets ``run`` to a function of the parsed arguments that returns the exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from validation.findings import Finding, Severity, exit_code


def _print_findings(findings: Sequence[Finding], show_warnings: bool) -> None:
    for finding in findings:
        if show_warnings or finding.severity is Severity.ERROR:
            print(finding.format())
    errors = sum(f.severity is Severity.ERROR for f in findings)
    print(f"{errors} error(s), {len(findings) - errors} warning(s)", file=sys.stderr)


def _run_check_config(args: argparse.Namespace) -> int:
    from validation.check import check_paths
    from validation.context import STANDARD_BACKENDS, Target

    backends = frozenset(args.backends.split(",")) if args.backends else STANDARD_BACKENDS
    started = time.perf_counter()
    from validation.vllm_config import check_vllm_paths

    findings = check_paths(args.paths, Target(backends=backends, gpus=args.gpus))
    findings = sorted([*findings, *check_vllm_paths(args.paths)], key=lambda f: (str(f.path), f.line, f.column))
    logging.getLogger(__name__).debug("checked in %.1f ms", (time.perf_counter() - started) * 1000)
    _print_findings(findings, show_warnings=not args.errors_only)
    return exit_code(findings)


def _add_check_config(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check-config",
        help="check config.pbtxt files against Triton's schema and load-time rules",
        description="PATH is a config.pbtxt, a model folder or a whole model repository.",
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    parser.add_argument(
        "--backends",
        help="comma-separated backends the target server has (default: those of NVIDIA's tritonserver container); "
        "this project's CPU server: python",
    )
    parser.add_argument(
        "--gpus",
        type=int,
        default=None,
        help="GPUs on the target server; only if set are KIND_AUTO, KIND_GPU and gpu ids judged against it "
        "(a negative gpu id is an error either way)",
    )
    parser.add_argument("--errors-only", action="store_true", help="print errors, not warnings")
    parser.set_defaults(run=_run_check_config)


def _run_check_load(args: argparse.Namespace) -> int:
    from serving.triton.launcher import TritonError
    from validation.load import check_load, to_findings

    try:
        statuses = check_load(args.repository, load_timeout_s=args.timeout)
    except TritonError as exc:
        print(f"check-load: {exc}", file=sys.stderr)
        return 1
    for status in statuses:
        if status.ready:
            print(status.format())
    findings = to_findings(args.repository, statuses)
    _print_findings(findings, show_warnings=True)
    return exit_code(findings) if statuses else 1


def _add_check_load(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check-load",
        help="load every model of a repository into a real Triton (explicit control, strict config)",
    )
    parser.add_argument("repository", type=Path, metavar="REPO")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each model's load")
    parser.set_defaults(run=_run_check_load)


_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _add_check_config,
    _add_check_load,
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m validation", description="Run one validation check, print its findings, exit 1 on errors."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in _SUBCOMMANDS:
        add(subparsers)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    run: Callable[[argparse.Namespace], int] = args.run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
