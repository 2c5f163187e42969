"""``python -m bench.canary`` (``make canary-eval``): how often the rollout controller gets its verdict wrong.

Runs the controller's own tick logic (``serving.rollout.machine`` with the ``ROLLOUT_*`` policy in
force) over thousands of simulated rollouts on a virtual clock: identical builds (A/A) at each base
error rate, and each kind of worse build, at 5, 20 and 100 requests/s. Prints the table, writes
bench/canary.json, bench/CANARY.md and bench/canary.png, refreshes the README's canary figures, and
prints one JSON line last. Under 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from bench.canary import report
from bench.canary.simulate import CLASSES, Canary, draw_settings, run_batch
from core.rollout_policy import RolloutPolicy

ROOT = Path(__file__).resolve().parents[2]
RATES = (5.0, 20.0, 100.0)
AA_ERROR_RATES = (0.0, 0.001, 0.005, 0.01, 0.02)
#: Base error rates the worse builds are compared at (mixed over a batch's rollouts).
BASE_ERROR_RATES = (0.0, 0.005, 0.01)
MEDIANS_S = (0.02, 0.5, 5.0)
HORIZON_S = 1800.0


def _batch(job: dict[str, Any]) -> dict[str, Any]:
    """One (class, rate[, A/A error rate]) batch; runs in a worker process."""
    policy = RolloutPolicy.model_validate_json(job["policy"])
    canary = Canary.model_validate(job["canary"])
    rng = np.random.default_rng(job["seed"])
    settings = draw_settings(rng, job["rows"], job["rate"], tuple(job["error_rates"]), MEDIANS_S)
    started = time.perf_counter()
    outcome = run_batch(canary, settings, policy, seed=job["seed"] + 1, horizon_s=job["horizon_s"])
    return {
        **{k: job[k] for k in ("class", "rate", "error_rates", "rows", "seed")},
        "bad": canary.bad,
        "decision": outcome.decision.tolist(),
        "seconds": [None if np.isnan(x) else float(x) for x in outcome.seconds],
        "weight": [None if np.isnan(x) else float(x) for x in outcome.weight],
        "reason": outcome.reason,
        "base_error_rate": settings.error_rate.tolist(),
        "reached": np.where(np.isnan(outcome.reached), -1.0, outcome.reached).tolist(),
        "wall_s": time.perf_counter() - started,
    }


def jobs(policy: RolloutPolicy, rows: int, seed: int, horizon_s: float) -> list[dict[str, Any]]:
    out = []
    index = 0
    for rate in RATES:
        for canary in CLASSES:
            groups = [(e,) for e in AA_ERROR_RATES] if not canary.bad else [BASE_ERROR_RATES]
            for error_rates in groups:
                index += 1
                out.append(
                    {
                        "class": canary.name,
                        "canary": canary.model_dump(),
                        "rate": rate,
                        "error_rates": list(error_rates),
                        "rows": rows,
                        "seed": seed + 1000 * index,
                        "horizon_s": horizon_s,
                        "policy": policy.model_dump_json(),
                    }
                )
    # Slowest first (low traffic decides slowest), so the two workers finish together.
    return sorted(out, key=lambda j: (j["rate"], j["class"] != "identical"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.canary", description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=500, help="rollouts per class, rate (and A/A error rate)")
    parser.add_argument("--seed", type=int, default=20261204)
    parser.add_argument("--horizon-s", type=float, default=HORIZON_S, help="virtual seconds before 'undecided'")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=ROOT / "bench")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--no-readme", action="store_true", help="do not refresh the README's canary figures")
    args = parser.parse_args(argv)
    try:
        policy = RolloutPolicy()
    except ValidationError as exc:
        print(f"canary-eval: bad ROLLOUT_* settings:\n{exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    todo = jobs(policy, args.rollouts, args.seed, args.horizon_s)
    print(
        f"canary-eval: {len(todo)} batches of {args.rollouts} simulated rollouts, {args.workers} workers, "
        f"horizon {args.horizon_s:.0f} s; policy {policy.model_dump()}",
        file=sys.stderr,
        flush=True,
    )
    results = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for done, result in enumerate(pool.map(_batch, todo), 1):
            results.append(result)
            print(
                f"  [{done}/{len(todo)}] {result['class']} at {result['rate']:g} req/s "
                f"(errors {', '.join(f'{e:.1%}' for e in result['error_rates'])}): {result['wall_s']:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    elapsed = time.perf_counter() - started
    summary = report.summarize(results, policy, elapsed, args.rollouts, args.horizon_s)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "canary.json").write_text(json.dumps(summary, indent=1) + "\n")
    markdown = report.markdown(summary)
    (args.out / "CANARY.md").write_text(markdown)
    report.plot(summary, args.out / "canary.png")
    if not args.no_readme and args.readme.is_file():
        report.refresh_readme(args.readme, markdown)
    print(report.table(summary))
    print(json.dumps(summary["headline"], sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
