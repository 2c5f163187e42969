"""The rollout controller: one acts at a time (a registry lease), any number stand by.

Each tick it reads the registry, keeps Triton serving exactly the champion and the canary (each
version materialized with its checksums verified, loaded as its own Triton model; a version that
left both roles is unloaded after a grace), adds up what every gateway replica counted since the
canary started, probes both versions with golden questions, and runs the rollout's tick logic
(``serving.rollout.machine``, the same code ``make canary-eval`` measures): start the canary at the
first step, roll it back at once on evidence of harm, step it up (or promote it after the last step)
once it is shown within the margins of the next weight, or wait. Every move goes through
``registry.rollout``, the same functions the CLI, the gateway's admin API and the promotion workflow
call, with its reason and figures recorded. A restarted controller resumes from the registry's
state; the evidence starts again from that moment (so it may wait longer, never decide on less).
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

import numpy as np
from mlflow.exceptions import MlflowException

from core.answers import ROWS_FILE
from core.names import served_model_name
from core.rollout_policy import RolloutPolicy
from registry import controller_status, materialize, rollout
from registry.errors import RegistryError
from registry.events import Actor
from registry.lease import Lease
from registry.publish import GOLDEN_ARTIFACT
from registry.state import RolloutState, get_version, read_state
from registry.store import Store
from serving.rollout.adoption import Adoption
from serving.rollout.analysis import (
    METRICS,
    Assessment,
    Evidence,
    Probes,
    Side,
    harm_reason,
    health_summary,
    waiting_for,
)
from serving.rollout.machine import Action, Machine
from serving.rollout.probes import Prober, load_golden
from serving.rollout.settings import ControllerSettings
from serving.rollout.window import Scraper, Snapshot, Totals
from serving.telemetry import VersionStats
from serving.triton.repository import RepositoryControl, RepositoryError, ServedModel, place, remove

log = logging.getLogger(__name__)

LEASE_NAME = "controller"


@dataclass
class _Progress:
    """The rollout being judged: which pair, its tick logic, and the last assessment (for reports)."""

    pair: tuple[int, int] | None = None  # (champion, canary)
    machine: Machine | None = None
    assessment: Assessment | None = None
    verdict: str | None = None


@dataclass
class _Served:
    ready: set[int] = field(default_factory=set)
    retired_since: dict[str, float] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)


def _side(stats: VersionStats) -> Side:
    return Side(
        np.array([stats.requests]),
        np.array([stats.errors]),
        {name: counts[None, :].copy() for name, counts in stats.histograms.items()},
    )


class Controller:
    """One controller process; ``run()`` loops until stopped, ``tick()`` is one step (tests call it)."""

    def __init__(
        self,
        store: Store,
        settings: ControllerSettings,
        policy: RolloutPolicy,
        *,
        triton: RepositoryControl | None = None,
        scrape: Callable[[], dict[str, Snapshot]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        prober: Prober | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.policy = policy
        self.clock = clock
        self.actor = Actor(name=f"rollout-controller {socket.gethostname()}:{os.getpid()}")
        self.lease = Lease(store, LEASE_NAME, self.actor.name, settings.lease_ttl_s)
        self.triton = triton if triton is not None else RepositoryControl(settings.triton_http_url)
        self._scraper = None if scrape is not None else Scraper(settings.gateways)
        self.scrape: Callable[[], dict[str, Snapshot]] = scrape if scrape is not None else self._scraper  # type: ignore[assignment]
        self.totals = Totals()
        # Given (tests), or made for each champion from the golden set it was validated on.
        self._fixed_prober = prober
        self.prober: Prober | None = prober
        self._golden: tuple[int, Path | None] | None = None  # (champion, where its golden set is)
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
        if self.prober is not None:
            self.prober.stop()
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

    def _golden_set(self, champion: int) -> Path | None:
        """Where the golden set to probe with is: CONTROLLER_GOLDEN_PATH, else the one the champion's
        registration logged (the set the offline gate judged it on), downloaded once; None without one."""
        local = self.settings.golden_path
        if local is not None and (local / ROWS_FILE).is_file():
            return local
        if self._golden is not None and self._golden[0] == champion:
            return self._golden[1]
        found: Path | None = None
        try:
            run_id = get_version(self.store, champion).run_id
            target = self.settings.cache_dir / f"golden-v{champion}"
            if run_id and not (target / ROWS_FILE).is_file():
                artifacts = self.store.client.get_run(run_id).info.artifact_uri
                self.store.download(f"{artifacts}/{GOLDEN_ARTIFACT}", target)
            if (target / ROWS_FILE).is_file():
                found = target
        except (RegistryError, MlflowException, OSError) as exc:
            log.warning("cannot fetch v%d's golden set from the registry: %s", champion, exc)
        if found is None:
            log.warning(
                "no golden set for v%d (CONTROLLER_GOLDEN_PATH %s, nor one logged with its registration): "
                "answer quality is not judged",
                champion,
                local,
            )
        self._golden = (champion, found)
        return found

    def _prober_for(self, champion: int) -> Prober | None:
        if self._fixed_prober is not None:
            return self._fixed_prober
        if self.policy.probe_rps <= 0:
            return None
        folder = self._golden_set(champion)
        if folder is None:
            return None
        questions = load_golden(folder, self.store.model)
        bases = [url.removesuffix("/metrics") for url in self.settings.gateways]
        log.info("golden probes: %d questions from %s, %.2g pairs/s", len(questions), folder, self.policy.probe_rps)
        return Prober(questions, bases, self.policy.probe_rps, timeout_s=self.settings.probe_timeout_s)

    def _evidence(self, champion: int, canary: int) -> Evidence:
        probes = Probes.empty(1, judged=self.prober is not None)
        if self.prober is not None:
            counts = self.prober.counts()
            probes = Probes(
                asked=np.array([float(counts.asked)]),
                worse=np.array([float(counts.worse)]),
                better=np.array([float(counts.better)]),
                canary_right=np.array([float(counts.canary_right)]),
                champion_right=np.array([float(counts.champion_right)]),
                judged=np.array([True]),
            )
        return Evidence(_side(self.totals.get(canary)), _side(self.totals.get(champion)), probes)

    def _judge(self, state: RolloutState) -> None:
        canary, champion = state.version_of("canary"), state.version_of("champion")
        progress = self.progress
        pair = (champion, canary) if canary is not None and champion is not None and canary != champion else None
        if pair != progress.pair:
            # A new canary (or champion): its evidence starts now.
            progress.pair, progress.machine, progress.assessment, progress.verdict = pair, None, None, None
            if self.prober is not None:
                self.prober.stop()
        if pair is None:
            self._set_phase("idle")
            return
        assert canary is not None and champion is not None
        if canary not in self.served.ready or champion not in self.served.ready:
            self._set_phase(f"waiting for Triton to serve v{champion} and v{canary}")
            return
        scrapes = self.scrape()
        now = self.clock()
        if progress.machine is None:
            self.totals.reset(scrapes)
            # A canary already at a weight (a restarted controller) starts its warm-up and step now.
            progress.machine = Machine(self.policy, 1, now)
            self.prober = self._prober_for(champion)
            if self.prober is not None:
                self.prober.start(champion, canary)
        else:
            self.totals.add(scrapes)
        machine = progress.machine
        evidence = self._evidence(champion, canary)
        machine.sync(now, np.array([float(state.canary_weight)]), evidence.canary.requests)
        if state.paused:
            self._set_phase("paused")
            return
        actions, assessment = machine.tick(now, evidence)
        progress.assessment = assessment
        figures: dict[str, float | int | str] = dict(assessment.row_figures(0))
        action = Action(int(actions[0]))
        weight = state.canary_weight
        if action is Action.START:
            self._set_phase("starting the canary")
            first = int(machine.next_weight()[0])
            self._act(
                lambda: rollout.set_weight(self.store, self.actor, first, canary, reason="canary loaded; first step")
            )
        elif action is Action.ROLLBACK:
            harmed = [m for m in METRICS if assessment.harm[m][0] and assessment.judged[m][0]]
            reason = "; ".join(harm_reason(m, figures, self.policy) for m in harmed)
            progress.verdict = f"rolled back: {reason}"
            self._rollback(canary, reason, figures)
        elif action is Action.STEP:
            target = float(machine.next_weight()[0])
            reason = f"healthy at {weight}%, {health_summary(assessment, 0, target, self.policy)}"
            progress.verdict = reason
            self._act(
                lambda: rollout.step(
                    self.store, self.actor, self.policy.steps, canary, reason=reason[:2000], details=figures
                )
            )
        elif action is Action.PROMOTE:
            reason = f"healthy at every step up to {weight}%, {health_summary(assessment, 0, 100.0, self.policy)}"
            progress.verdict = reason
            self._act(
                lambda: rollout.promote_to_champion(
                    self.store, self.actor, canary, reason=reason[:2000], details=figures
                )
            )
            log.info("promoted v%d: %s", canary, reason)
        else:
            last = weight >= self.policy.steps[-1]
            missing = waiting_for(assessment, 0, bool(machine.next_weight()[0] >= self.policy.steps[-1]))
            dwell = now - float(machine.step_started[0])
            if dwell < self.policy.min_step_s or (
                evidence.canary.requests[0] - machine.step_requests[0] < self.policy.min_step_requests
            ):
                served = evidence.canary.requests[0] - machine.step_requests[0]
                waiting = f"its time at this step ({dwell:.0f} s, {served:.0f} canary requests so far)"
            else:
                waiting = "evidence on " + ", ".join(missing) if missing else "the next tick"
            progress.verdict = f"{'promotion' if last else 'the next step'} waits for {waiting}"
            self._set_phase(f"analysing v{canary} at {weight}%")

    def _rollback(self, canary: int, reason: str, details: dict[str, float | int | str]) -> None:
        log.warning("rolling back canary v%d: %s", canary, reason)
        self._act(lambda: rollout.rollback(self.store, self.actor, canary, reason=reason[:2000], details=details))

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
        assessment = self.progress.assessment
        status: dict[str, Any] = {
            "holder": self.actor.name,
            "phase": self.phase,
            "canary": state.version_of("canary"),
            "weight": state.canary_weight,
            "verdict": self.progress.verdict,
            "figures": None if assessment is None else assessment.row_figures(0),
            "quality_judged": self.prober is not None,
            "unreachable_gateways": list(getattr(self._scraper, "unreachable", [])),
            "failed_loads": {str(k): v for k, v in self.served.failed.items()},
        }
        now = self.clock()
        # Figures move every tick: a report goes out when anything else changed, or every status_every_s.
        steady = {k: v for k, v in status.items() if k != "figures"} == {
            k: v for k, v in self._last_status.items() if k != "figures"
        }
        if steady and now - self._status_at < self.settings.status_every_s:
            return
        try:
            controller_status.publish(self.store, {**status, "at": time.time()})
        except Exception as exc:  # a report only; the next tick tries again
            log.debug("could not publish the controller status: %s", exc)
            return
        self._last_status, self._status_at = status, now
