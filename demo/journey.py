"""The journey ``make demo`` runs after ``dvc repro``, on a scratch registry so it runs the same every time.

1. Start the stack (MLflow on a scratch store, Triton, the controller, two gateways, nginx) on free ports.
2. Register build 1 (the one ``dvc repro`` just validated) and promote it: no champion yet, so it
   becomes the champion directly.
3. Synthetic users start asking golden-set questions through nginx.
4. Build 2, another quantization (none: full precision, which on a CPU is also faster than
   dequantizing nf4 weights at every matmul), goes through the same pipeline (``dvc exp run --temp``)
   and is registered as the candidate; promoted to canary, the controller steps it up on live
   metrics and promotes it. (bnb-int8 would be rolled back here: on a CPU bitsandbytes' int8
   matmuls are much slower, and the controller's latency test catches exactly that.)
5. Build 3, a serving-config change, passes validation too, but regresses under live traffic (a
   fault injected into it on every gateway); the controller rolls it back on its own.
It prints each step with weights, per-version figures and decisions, the client-visible error
count (which must be 0), and last a one-line JSON summary.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demo.scratch import Scratch, ScratchError, scratch_stack
from demo.scratch import run as run_command
from demo.traffic import Traffic
from registry import events, rollout
from registry.events import Actor
from registry.state import RolloutState, read_state
from registry.store import Store

log = logging.getLogger("demo")

ACTOR = Actor(name="make demo")
#: The shipped rollout policy with 10 s per step instead of 30 and three golden probes a second
#: instead of one, so the journey's healthy canary is promoted in a few minutes, not ten.
DEMO_POLICY = {"ROLLOUT_MIN_STEP_S": "10", "ROLLOUT_PROBE_RPS": "3"}


class JourneyError(ScratchError):
    """A step of the journey did not happen in time; the message says which and where to look."""


@dataclass
class Step:
    at_s: float
    what: str
    champion: int | None
    canary: int | None
    weight: int
    served: dict[str, int]
    errors: int
    decision: str = ""


@dataclass
class Journey:
    run_dir: Path
    started: float = field(default_factory=time.monotonic)
    steps: list[Step] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    #: Audit events already shown (or older than the journey): a move is shown once, however fast it came.
    events_seen: set[str] = field(default_factory=set)
    _seen: Counter[str] = field(default_factory=Counter)

    def record(self, what: str, state: RolloutState, traffic: Traffic | None, decision: str = "") -> None:
        served: dict[str, int] = {}
        errors = 0
        if traffic is not None:
            current = Counter(traffic.tally.by_version)
            served = {f"v{v}": n for v, n in sorted((current - self._seen).items())}
            self._seen = current
            errors = traffic.tally.errors
        step = Step(
            round(time.monotonic() - self.started, 1),
            what,
            state.version_of("champion"),
            state.version_of("canary"),
            state.canary_weight,
            served,
            errors,
            decision,
        )
        self.steps.append(step)
        log.info(
            "%6.1f s  %-44s champion v%s  canary %s  weight %3d%%  served %s  errors %d  %s",
            step.at_s, what, step.champion, f"v{step.canary}" if step.canary else "-", step.weight,
            served or "-", errors, decision,
        )  # fmt: skip


def _build(env: dict[str, str], overrides: list[str], what: str) -> None:
    """Another build through the real pipeline (a temporary DVC experiment), registered as candidate."""
    command = ["dvc", "exp", "run", "--temp", *(arg for o in overrides for arg in ("-S", o))]
    run_command(command, env, what)


def run(run_dir: Path) -> dict[str, Any]:
    """The whole journey; returns the steps and the summary. Leaves nothing running."""
    journey = Journey(run_dir)
    traffic: Traffic | None = None
    with scratch_stack(run_dir, ACTOR, journey.timings, service_env={"controller": DEMO_POLICY}) as stack:
        try:
            store = stack.store
            journey.events_seen.update(e.run_id for e in events.history(store, 50) if e.run_id)
            journey.record("build 1 registered, promoted to champion", read_state(store), None)
            traffic = Traffic(stack.edge_url).start()
            time.sleep(2)
            journey.record("synthetic users start (6 at a time, via nginx)", read_state(store), traffic)
            summary = _canary_then_regression(stack, journey, traffic)
        finally:
            if traffic is not None:
                traffic.stop()
    return {"steps": [step.__dict__ for step in journey.steps], "summary": summary}


def _canary_then_regression(stack: Scratch, journey: Journey, traffic: Traffic) -> dict[str, Any]:
    store, env = stack.store, stack.env
    t0 = time.monotonic()
    traffic.pause()  # two cores: the build's validation needs them more than the synthetic users
    _build(env, ["quantize.method=none", "package.version=2"], "build 2 (full precision)")
    journey.timings["build_2_s"] = round(time.monotonic() - t0, 1)
    traffic.resume()
    journey.record("build 2 (full precision) validated, candidate", read_state(store), traffic)
    rollout.promote_to_canary(store, ACTOR, reason="make demo: build 2")
    second = read_state(store).version_of("canary")
    journey.record(f"v{second} promoted to canary", read_state(store), traffic)
    t0 = time.monotonic()
    _follow(store, journey, traffic, until=lambda s: s.version_of("canary") is None, timeout_s=900)
    journey.timings["canary_to_champion_s"] = round(time.monotonic() - t0, 1)
    promoted = read_state(store).version_of("champion")
    if promoted != second:
        reason = next((e.reason for e in events.history(store, 5) if e.action.startswith("rollback")), None)
        raise JourneyError(f"build 2 (v{second}) was expected to become champion, but it was rolled back: {reason}")

    t0 = time.monotonic()
    traffic.pause()
    _build(
        env,
        ["quantize.method=none", "package.version=3", "package.max_queue_delay_us=2000"],
        "build 3 (serving-config change)",
    )
    journey.timings["build_3_s"] = round(time.monotonic() - t0, 1)
    traffic.resume()
    journey.record("build 3 (queue delay 2 ms) validated, candidate", read_state(store), traffic)
    rollout.promote_to_canary(store, ACTOR, reason="make demo: build 3")
    canary = read_state(store).version_of("canary")
    journey.record(f"v{canary} promoted to canary", read_state(store), traffic)
    _follow(store, journey, traffic, until=lambda s: s.canary_weight > 0, timeout_s=120)
    onset = time.monotonic()
    stack.admin("POST", "/admin/faults", {"version": canary, "error_percent": 100})
    journey.record(f"fault injected into v{canary}: every answer fails", read_state(store), traffic)
    _follow(store, journey, traffic, until=lambda s: s.canary_weight == 0 or s.version_of("canary") is None,
            timeout_s=60, poll_s=0.1)  # fmt: skip
    rollback_s = round(time.monotonic() - onset, 2)
    _follow(store, journey, traffic, until=lambda s: s.version_of("canary") is None, timeout_s=30)
    time.sleep(1)
    tally = traffic.stop()
    final = read_state(store)
    journey.record("traffic stops", final, traffic)
    if tally.error_samples:
        log.warning("client-visible errors: %s", tally.error_samples)
    return {
        "champion": final.version_of("champion"),
        "promoted": promoted,
        "rolled_back": canary if final.version_of("canary") is None else None,
        "rollback_s": rollback_s,
        "client_errors": tally.errors,
        "requests": tally.requests,
        "correct": tally.correct,
        # The users stream: how long they waited for the first words of an answer, through nginx.
        "first_token_p50_ms": round(statistics.median(tally.first_token_ms), 1) if tally.first_token_ms else None,
        "by_version": dict(tally.by_version),
        **journey.timings,
    }


def _follow(
    store: Store,
    journey: Journey,
    traffic: Traffic,
    until: Callable[[RolloutState], bool],
    timeout_s: float,
    poll_s: float = 0.5,
) -> None:
    """Record every rollout move (weight, aliases) with the controller's reason until ``until`` holds.

    Moves are read from the audit events, so one that landed before this call (a rollback can take
    under a second) is shown too; the journey's own moves (actor ``make demo``) it has shown itself.
    """
    started = time.monotonic()
    seen = journey.events_seen
    recorded = -1  # the newest generation whose event has been read

    def catch_up(state: RolloutState) -> None:
        nonlocal recorded
        fresh = [e for e in reversed(events.history(store, 20)) if e.run_id and e.run_id not in seen]
        seen.update(e.run_id for e in fresh if e.run_id)
        for event in fresh:
            if event.actor != ACTOR.name:
                journey.record(event.summary, state, traffic, decision=event.reason or "")
            recorded = max(recorded, event.generation)

    while True:
        state = read_state(store)
        if state.generation > recorded:
            catch_up(state)
        if until(state):
            # The audit run of a move lands a moment after its aliases: wait for it, so every move shows.
            deadline = time.monotonic() + 5
            while state.generation > recorded and time.monotonic() < deadline:
                time.sleep(0.2)
                catch_up(state)
            return
        if time.monotonic() - started > timeout_s:
            raise JourneyError(f"the rollout did not move as expected within {timeout_s:.0f} s: {state.describe()}")
        time.sleep(poll_s)
