"""The controller against a real MLflow registry: it loads what must serve, steps a healthy canary up to
champion, rolls a bad one back with its reason and figures, refuses a canary Triton cannot load, and a
second controller waits for the lease and resumes where the first stopped."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from core.rollout_policy import RolloutPolicy
from pipelines import register as stage
from registry import events, rollout
from registry.events import Actor
from registry.settings import RegistrySettings
from registry.state import read_state
from registry.store import Store
from serving.rollout.controller import Controller
from serving.rollout.settings import ControllerSettings
from serving.telemetry import LATENCY_BUCKETS, N_BUCKETS, VersionStats
from serving.triton.repository import RepositoryError

pytestmark = pytest.mark.mlflow

# The shipped policy, with shorter dwells so a rollout fits in a few hundred virtual seconds; no probes here
# (tests/faults/test_quality_rollback.py probes a real stack).
POLICY = RolloutPolicy(min_step_s=5, probe_rps=0)


class FakeTriton:
    """RepositoryControl's interface over a set of names; ``refuse`` names fail to load with Triton's words."""

    def __init__(self) -> None:
        self.models: set[str] = set()
        self.refuse: dict[str, str] = {}
        self.unloaded: list[str] = []

    def load(self, name: str) -> None:
        if name in self.refuse:
            raise RepositoryError(f"Triton refused to load {name}: {self.refuse[name]}")
        self.models.add(name)

    def unload(self, name: str, wait_s: float = 60.0) -> None:
        self.models.discard(name)
        self.unloaded.append(name)

    def loaded(self) -> set[str]:
        return set(self.models)

    def close(self) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Gateways:
    """Two replicas' cumulative counters, grown each scrape by 20 requests each split by the registry's weight.

    Latencies are lognormal around each version's median (``latency_s``), errors binomial (``error_rate``).
    """

    def __init__(self, store: Store, seed: int = 0) -> None:
        self.store = store
        self.rng = np.random.default_rng(seed)
        self.counters: dict[str, dict[int, VersionStats]] = {"g1": {}, "g2": {}}
        self.error_rate: dict[int, float] = {}
        self.latency_s: dict[int, float] = {}

    def _add(self, replica: str, version: int, n: int) -> None:
        errors = int(self.rng.binomial(n, self.error_rate.get(version, 0.0)))
        latencies = self.rng.lognormal(np.log(self.latency_s.get(version, 0.02)), 0.3, n - errors)
        counts = np.bincount(np.searchsorted(LATENCY_BUCKETS, latencies), minlength=N_BUCKETS).astype(float)
        entry = self.counters[replica].setdefault(version, VersionStats())
        entry.requests += n
        entry.errors += errors
        for name in entry.histograms:
            entry.histograms[name] = entry.histograms[name] + counts

    def __call__(self) -> dict[str, dict[int, VersionStats]]:
        state = read_state(self.store)
        champion, canary = state.version_of("champion"), state.version_of("canary")
        for replica in self.counters:
            to_canary = int(self.rng.binomial(20, state.canary_weight / 100)) if canary else 0
            if champion:
                self._add(replica, champion, 20 - to_canary)
            if canary:
                self._add(replica, canary, to_canary)
        return {r: {v: s.copy() for v, s in c.items()} for r, c in self.counters.items()}


Register = Callable[[bytes], int]


@pytest.fixture
def register(make_project: Callable[..., object], settings: RegistrySettings, actor: Actor) -> Register:
    def run(weights: bytes) -> int:
        return stage.register(make_project(weights=weights), settings, actor).version  # type: ignore[arg-type]

    return run


def _controller(store: Store, tmp_path: Path, triton: FakeTriton, gateways: Gateways, clock: Clock) -> Controller:
    settings = ControllerSettings(
        gateways=["unused"],
        triton_repository=tmp_path / "repo",
        cache_dir=tmp_path / "versions",
        unload_grace_s=3,
        lease_ttl_s=30,
        golden_path=None,
    )
    return Controller(store, settings, POLICY, triton=triton, scrape=gateways, clock=clock)  # type: ignore[arg-type]


def _ticks(controller: Controller, clock: Clock, n: int, until: Callable[[], bool] = lambda: False) -> int:
    for i in range(n):
        controller.tick()
        clock.now += 1
        if until():
            return i + 1
    return n


def test_a_healthy_canary_is_stepped_up_and_promoted(
    store: Store, actor: Actor, register: Register, tmp_path: Path
) -> None:
    v1 = register(b"one")
    rollout.promote_to_champion(store, actor, v1)
    v2 = register(b"two")
    triton, gateways, clock = FakeTriton(), Gateways(store), Clock()
    controller = _controller(store, tmp_path, triton, gateways, clock)
    controller.tick()
    assert triton.models == {f"{store.model}-v{v1}"}  # the champion is materialized (verified) and loaded
    assert (tmp_path / "repo" / f"{store.model}-v{v1}" / "config.pbtxt").is_file()

    rollout.promote_to_canary(store, actor, v2)
    _ticks(controller, clock, 900, until=lambda: read_state(store).version_of("canary") is None)

    state = read_state(store)
    assert state.version_of("champion") == v2
    history = events.history(store, 20)
    weights = [e.summary for e in reversed(history) if e.action in ("set-weight", "step")]
    assert len(weights) == len(POLICY.steps)  # 0 -> 5 -> 25 -> 50 -> 100, then promoted
    assert history[0].action == "promote-champion" and "healthy at every step up to 100%" in (history[0].reason or "")
    steps = [e for e in history if e.action == "step"]
    # Each step says what it was shown, with the figures it rests on.
    assert steps and all("shown within the margins" in (e.reason or "") for e in steps)
    assert all("latency_p95_ratio" in e.details and "error_increase_upper" in e.details for e in steps)
    # v1 left both roles: unloaded after the grace.
    _ticks(controller, clock, 5)
    assert f"{store.model}-v{v1}" in triton.unloaded
    controller.close()


def test_a_failing_canary_is_rolled_back_with_its_figures(
    store: Store, actor: Actor, register: Register, tmp_path: Path
) -> None:
    v1 = register(b"one")
    rollout.promote_to_champion(store, actor, v1)
    v2 = register(b"bad")
    rollout.promote_to_canary(store, actor, v2)
    triton, gateways, clock = FakeTriton(), Gateways(store), Clock()
    gateways.error_rate[v2] = 1.0
    controller = _controller(store, tmp_path, triton, gateways, clock)

    ticks = _ticks(controller, clock, 60, until=lambda: read_state(store).version_of("canary") is None)

    # The warm-up, then a handful of failed canary requests against a clean champion are evidence enough.
    assert ticks <= POLICY.warmup_s + 8
    state = read_state(store)
    assert state.version_of("champion") == v1 and state.canary_weight == 0
    back = events.history(store, 5)[0]
    assert back.action.startswith("rollback") and "canary error rate 100.00% is above" in (back.reason or "")
    assert back.details["canary_error_rate"] == 1.0 and back.details["errors_evidence"] >= 1 / POLICY.alpha
    controller.close()


def test_a_canary_triton_cannot_load_is_refused_and_the_champion_stays(
    store: Store, actor: Actor, register: Register, tmp_path: Path
) -> None:
    v1 = register(b"one")
    rollout.promote_to_champion(store, actor, v1)
    v2 = register(b"broken")
    rollout.promote_to_canary(store, actor, v2)
    triton, gateways, clock = FakeTriton(), Gateways(store), Clock()
    triton.refuse[f"{store.model}-v{v2}"] = "SyntaxError in model.py"
    controller = _controller(store, tmp_path, triton, gateways, clock)

    _ticks(controller, clock, 3)

    state = read_state(store)
    assert state.version_of("canary") is None and state.version_of("champion") == v1
    assert triton.models == {f"{store.model}-v{v1}"}
    assert "SyntaxError in model.py" in (events.history(store, 1)[0].reason or "")
    controller.close()


def test_one_controller_acts_and_a_restarted_one_resumes(
    store: Store, actor: Actor, register: Register, tmp_path: Path
) -> None:
    v1 = register(b"one")
    rollout.promote_to_champion(store, actor, v1)
    v2 = register(b"two")
    rollout.promote_to_canary(store, actor, v2)
    triton, gateways, clock = FakeTriton(), Gateways(store), Clock()
    first = _controller(store, tmp_path / "a", triton, gateways, clock)
    second = _controller(store, tmp_path / "b", triton, gateways, clock)

    _ticks(first, clock, 300, until=lambda: read_state(store).canary_weight >= 25)
    second.tick()
    assert second.phase == "standby"  # the lease is held: it must not act
    reached = read_state(store).canary_weight
    assert reached >= 25

    first.close()  # the first controller goes away mid-rollout (its lease is released)
    _ticks(second, clock, 900, until=lambda: read_state(store).version_of("canary") is None)

    assert read_state(store).version_of("champion") == v2
    actors = {e.actor for e in events.history(store, 20) if e.action in ("step", "promote-champion")}
    assert second.actor.name in actors
    second.close()


def test_a_slow_start_is_forgiven_but_a_slow_canary_is_rolled_back(
    store: Store, actor: Actor, register: Register, tmp_path: Path
) -> None:
    v1 = register(b"one")
    rollout.promote_to_champion(store, actor, v1)
    v2 = register(b"cold")
    rollout.promote_to_canary(store, actor, v2)
    triton, gateways, clock = FakeTriton(), Gateways(store), Clock()
    controller = _controller(store, tmp_path, triton, gateways, clock)
    _ticks(controller, clock, 3, until=lambda: read_state(store).canary_weight >= 5)
    gateways.latency_s[v2] = 0.4  # cold caches: 20x the champion's latency, inside the warm-up
    _ticks(controller, clock, int(POLICY.warmup_s) - 2)
    gateways.latency_s[v2] = 0.02
    _ticks(controller, clock, 30)
    assert read_state(store).version_of("canary") == v2  # not rolled back for a cold start

    gateways.latency_s[v2] = 0.03  # 50% slower from here on: rolled back
    _ticks(controller, clock, 300, until=lambda: read_state(store).version_of("canary") is None)

    state = read_state(store)
    assert state.version_of("champion") == v1 and state.version_of("canary") is None
    back = events.history(store, 3)[0]
    assert back.action.startswith("rollback") and "latency" in (back.reason or "")
    assert back.details["latency_p50_ratio"] > POLICY.latency_tolerance
    controller.close()


def test_without_a_local_golden_set_the_champions_registered_one_is_probed_with(
    store: Store, actor: Actor, register: Register, tmp_path: Path
) -> None:
    v1 = register(b"one")
    rollout.promote_to_champion(store, actor, v1)
    controller = _controller(store, tmp_path, FakeTriton(), Gateways(store), Clock())

    folder = controller._golden_set(v1)

    # The set its registration logged (tests/registry/conftest.py writes one question): what the gate judged on.
    assert folder is not None and '"id": "q1"' in (folder / "golden.jsonl").read_text()
    assert (folder / "images" / "q1.png").read_bytes() == b"\x89PNG fixture"
    assert controller._golden_set(v1) == folder  # fetched once
    controller.close()
