"""The rollout controller: one acts at a time (a registry lease), any number stand by.

Each tick it reads the registry, keeps Triton serving exactly the champion and the canary (each
version materialized with its checksums verified, loaded as its own Triton model; a version that
left both roles is unloaded after a grace), scrapes every gateway replica, and judges the canary:
a hard-floor breach rolls it back at once; every ``rollout.interval_s`` a statistical verdict steps
the weight up, promotes after the last step, or counts a failed check (``max_failed_checks`` in a
row roll it back). Every move goes through ``registry.rollout``, the same functions the CLI, the
gateway's admin API and the promotion workflow call, with its reason and figures recorded. A
restarted controller resumes from the registry: nothing it needs lives only in its memory.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.names import served_model_name
from registry import controller_status, materialize, rollout
from registry.errors import RegistryError
from registry.events import Actor
from registry.lease import Lease
from registry.state import RolloutState, read_state
from registry.store import Store
from serving.rollout.adoption import Adoption
from serving.rollout.analysis import Decision, RolloutParams, Verdict, judge
from serving.rollout.settings import ControllerSettings
from serving.rollout.window import Scraper, Snapshot, Windows
from serving.telemetry import VersionStats
from serving.triton.repository import RepositoryControl, RepositoryError, ServedModel, place, remove

log = logging.getLogger(__name__)

LEASE_NAME = "controller"


@dataclass
class _Progress:
    """What the controller tracks about the current canary (rebuilt from the registry on restart)."""

    canary: int | None = None
    weight: int = -1
    judged_at: float = 0.0
    failed_checks: int = 0
    verdict: Verdict | None = None
    window_started: float = 0.0
    # When the canary's p95 first breached its floor in the current run of breaches.
    slow_since: float | None = None


@dataclass
class _Served:
    ready: set[int] = field(default_factory=set)
    retired_since: dict[str, float] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)


def _details(verdict: Verdict) -> dict[str, float | int | str]:
    return {key: round(value, 6) for key, value in verdict.figures.items()}


class Controller:
    """One controller process; ``run()`` loops until stopped, ``tick()`` is one step (tests call it)."""

    def __init__(
        self,
        store: Store,
        settings: ControllerSettings,
        params: RolloutParams,
        *,
        triton: RepositoryControl | None = None,
        scrape: Callable[[], dict[str, Snapshot]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.settings = settings
        self.params = params
        self.clock = clock
        self.actor = Actor(name=f"rollout-controller {socket.gethostname()}:{os.getpid()}")
        self.lease = Lease(store, LEASE_NAME, self.actor.name, settings.lease_ttl_s)
        self.triton = triton if triton is not None else RepositoryControl(settings.triton_http_url)
        self._scraper = None if scrape is not None else Scraper(settings.gateways)
        self.scrape: Callable[[], dict[str, Snapshot]] = scrape if scrape is not None else self._scraper  # type: ignore[assignment]
        # Reset at every new weight; a step's whole history is kept (one small snapshot per tick).
        self.windows = Windows(horizon_s=24 * 3600, clock=clock)
        self.progress = _Progress()
        self.served = _Served()
        self.adoption = Adoption(self)
        self.phase = "starting"
        self._status_at = 0.0
        self._last_status: dict[str, Any] = {}
        self._stopping = False

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        log.info(
            "controller %s starting (lease %r, ttl %.0f s)", self.actor.name, LEASE_NAME, self.settings.lease_ttl_s
        )
        try:
            while not self._stopping:
                started = self.clock()
                try:
                    self.tick()
                except Exception:  # one bad tick (MLflow or Triton hiccup) must not end the controller
                    log.exception("controller tick failed; retrying next tick")
                    self.phase = "error"
                time.sleep(max(0.0, self.settings.tick_s - (self.clock() - started)))
        finally:
            self.close()

    def stop(self) -> None:
        self._stopping = True

    def close(self) -> None:
        try:
            if self.lease.held:
                self.lease.release()
        except Exception:  # release is best effort: the lease expires anyway
            log.warning("could not release the controller lease; it expires in %.0f s", self.settings.lease_ttl_s)
        if self._scraper is not None:
            self._scraper.close()
        self.triton.close()

    def tick(self) -> None:
        """One step: hold the lease, read the registry, reconcile Triton, judge the canary."""
        try:
            # The lease lives in MLflow too: when MLflow is down, this is the first call to fail.
            holding = self.lease.renew() if self.lease.held else self.lease.acquire()
            state = read_state(self.store) if holding else None
        except Exception as exc:  # MLflow down: change nothing, gateways keep the last split
            self._set_phase("registry unreachable")
            log.warning("registry unreachable (%s); holding the current split", exc)
            return
        if state is None:
            self._set_phase("standby")
            return
        # A tick that loads or unloads a model can outlast the lease: keep it renewed meanwhile.
        with self.lease.renewing():
            # Aliases moved in MLflow outside the project's actions: adopted or put back first.
            if (state := self.adoption.settle(state)) is None:
                return
            self._reconcile_triton(state)
            self._judge(state)
            self._publish(state)

    # -- Triton ---------------------------------------------------------------------------------

    def _name(self, version: int) -> str:
        return served_model_name(self.store.model, version)

    def _reconcile_triton(self, state: RolloutState) -> None:
        wanted = {v for v in (state.version_of("champion"), state.version_of("canary")) if v is not None}
        try:
            loaded = {name for name in self.triton.loaded() if name.startswith(f"{self.store.model}-v")}
        except Exception as exc:  # Triton down: nothing to load or unload now; retry next tick
            log.warning("cannot list Triton's models: %s", exc)
            self.served.ready.clear()
            return
        # What Triton serves is ready (a version back in a role within the unload grace is still
        # loaded: no reload); a version Triton lost (a restart) is loaded again.
        self.served.ready = {v for v in wanted if self._name(v) in loaded}
        for version in sorted(wanted - self.served.ready):
            if version in self.served.failed and state.version_of("canary") != version:
                continue
            self._load(state, version)
        now = self.clock()
        names = {self._name(v) for v in wanted}
        for name in sorted(loaded - names):
            since = self.served.retired_since.setdefault(name, now)
            if now - since >= self.settings.unload_grace_s:
                log.info("unloading %s (neither champion nor canary for %.0f s)", name, now - since)
                try:
                    self.triton.unload(name)
                    remove(self.settings.triton_repository, name)
                except RepositoryError as exc:
                    log.warning("%s", exc)
                    continue
                self.served.retired_since.pop(name, None)
        for name in names:
            self.served.retired_since.pop(name, None)

    def _load(self, state: RolloutState, version: int) -> None:
        name = self._name(version)
        self._set_phase(f"loading v{version}")
        try:
            folder = materialize.materialize_version(self.store, version, self.settings.cache_dir / str(version))
            place(ServedModel(name, version, folder, "version"), self.settings.triton_repository)
            self.triton.load(name)
        except (RegistryError, RepositoryError, OSError) as exc:
            self.served.failed[version] = str(exc)
            log.error("v%d cannot be served: %s", version, exc)
            # Nothing Triton refused stays in its repository: a Triton (re)started over it with every
            # model loaded (`--load-model=*`, as `make up` does) would refuse to start at all.
            try:
                remove(self.settings.triton_repository, name)
            except OSError as removal:
                log.warning("could not remove %s from Triton's repository: %s", name, removal)
            if state.version_of("canary") == version:
                self._rollback(version, f"canary v{version} cannot be served, so the rollout is refused: {exc}", {})
            return
        self.served.failed.pop(version, None)
        self.served.ready.add(version)
        log.info("v%d is loaded in Triton as %s", version, name)

    # -- judging --------------------------------------------------------------------------------

    def _judge(self, state: RolloutState) -> None:
        canary, champion = state.version_of("canary"), state.version_of("champion")
        progress = self.progress
        if canary != progress.canary or state.canary_weight != progress.weight:
            # A new canary or a new weight: judge only traffic at the current split.
            if canary != progress.canary:
                progress.failed_checks = 0
            progress.canary, progress.weight = canary, state.canary_weight
            progress.judged_at = progress.window_started = self.clock()
            progress.verdict = None
            progress.slow_since = None
            self.windows.reset()
        if canary is None or champion is None:
            self._set_phase("idle")
            return
        if canary not in self.served.ready or champion not in self.served.ready:
            self._set_phase(f"waiting for Triton to serve v{champion} and v{canary}")
            return
        self.windows.add(self.scrape())
        if state.paused:
            self._set_phase("paused")
            return
        if state.canary_weight < self.params.steps[0]:
            self._set_phase("starting the canary")
            self._act(
                lambda: rollout.set_weight(
                    self.store, self.actor, self.params.steps[0], canary, reason="canary loaded; first step"
                )
            )
            return
        self._set_phase(f"analysing v{canary} at {state.canary_weight}%")
        now = self.clock()
        # Hard floors: on the last interval only, every tick, so a fault shows within seconds. An
        # error-rate breach aborts at once; a p95 breach must last a whole interval, so the first
        # slow requests of a freshly loaded canary (cold caches, lazy imports) do not roll it back.
        recent, _ = self.windows.last(self.params.interval_s)
        floor = judge(recent.get(champion, VersionStats()), recent.get(canary, VersionStats()), self.params)
        if floor.decision is Decision.ABORT and "errors" not in floor.floors:
            if progress.slow_since is None:
                progress.slow_since = now
            if now - progress.slow_since < self.params.interval_s:
                floor = Verdict(Decision.WAIT, floor.reasons, floor.figures, floor.floors)
        elif floor.decision is not Decision.ABORT:
            progress.slow_since = None
        if floor.decision is Decision.ABORT:
            progress.verdict = floor
            self._rollback(canary, "; ".join(floor.reasons), _details(floor))
            return
        # The statistical verdict: every interval, on all traffic since this step began, so a low
        # weight gathers enough requests over several intervals instead of waiting forever.
        if now - progress.judged_at < self.params.interval_s:
            return
        window, span = self.windows.last(now - progress.window_started)
        if span < 0.8 * self.params.interval_s:
            return
        # The floors were judged on the recent interval above; here only the statistics.
        verdict = judge(
            window.get(champion, VersionStats()), window.get(canary, VersionStats()), self.params, floors=False
        )
        if state.canary_weight >= 100 and verdict.decision is Decision.WAIT:
            # At 100% the champion gets no traffic to compare with: the floors (checked above) and
            # enough canary requests decide; the statistics were done at the lower steps.
            served = window.get(canary, VersionStats()).requests
            if served >= self.params.min_requests:
                reason = f"{served:.0f} requests at 100% within the floors"
                verdict = Verdict(Decision.HEALTHY, [reason], verdict.figures)
        progress.judged_at = now
        progress.verdict = verdict
        if verdict.decision is Decision.ABORT:
            self._rollback(canary, "; ".join(verdict.reasons), _details(verdict))
        elif verdict.decision is Decision.FAIL:
            progress.failed_checks += 1
            log.warning("check failed (%d of %d): %s", progress.failed_checks, self.params.max_failed_checks, verdict)
            if progress.failed_checks >= self.params.max_failed_checks:
                self._rollback(canary, "; ".join(verdict.reasons), _details(verdict))
        elif verdict.decision is Decision.HEALTHY:
            progress.failed_checks = 0
            self._advance(state, canary, verdict)

    def _advance(self, state: RolloutState, canary: int, verdict: Verdict) -> None:
        details = _details(verdict)
        if state.canary_weight >= self.params.steps[-1]:
            reason = f"healthy at every step up to {state.canary_weight}%"
            self._act(lambda: rollout.promote_to_champion(self.store, self.actor, canary))
            log.info("promoted v%d: %s", canary, reason)
            return
        self._act(
            lambda: rollout.step(
                self.store, self.actor, self.params.steps, canary, reason="healthy window", details=details
            )
        )

    def _rollback(self, canary: int, reason: str, details: dict[str, float | int | str]) -> None:
        log.warning("rolling back canary v%d: %s", canary, reason)
        self._act(lambda: rollout.rollback(self.store, self.actor, canary, reason=reason, details=details))

    def _act(self, action: Callable[[], object]) -> None:
        try:
            action()
        except RegistryError as exc:
            # Someone else moved the rollout (a person, the workflow): re-read next tick.
            log.warning("rollout action refused: %s", exc)

    # -- reporting ------------------------------------------------------------------------------

    def _set_phase(self, phase: str) -> None:
        if phase != self.phase:
            log.info("controller: %s", phase)
        self.phase = phase

    def _publish(self, state: RolloutState) -> None:
        verdict = self.progress.verdict
        status: dict[str, Any] = {
            "holder": self.actor.name,
            "phase": self.phase,
            "canary": state.version_of("canary"),
            "weight": state.canary_weight,
            "failed_checks": self.progress.failed_checks,
            "verdict": None if verdict is None else verdict.summary(),
            "figures": None if verdict is None else _details(verdict),
            "unreachable_gateways": list(getattr(self._scraper, "unreachable", [])),
            "failed_loads": {str(k): v for k, v in self.served.failed.items()},
        }
        now = self.clock()
        if status == self._last_status and now - self._status_at < self.settings.status_every_s:
            return
        try:
            controller_status.publish(self.store, {**status, "at": time.time()})
        except Exception as exc:  # a report only; the next tick tries again
            log.debug("could not publish the controller status: %s", exc)
            return
        self._last_status, self._status_at = status, now


def load_params(path: Path) -> RolloutParams:
    from core.params import load_group

    return load_group("rollout", RolloutParams, path)
