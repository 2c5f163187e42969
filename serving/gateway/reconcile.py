"""Keep this replica's view of the rollout current: the registry's split and what Triton has ready.

Two background loops. The registry loop reads the rollout state every ``GATEWAY_REGISTRY_POLL_S``
(one ``get_registered_model`` call, in a thread) and routes by what serves, the ``rollout.state``
tag only the project's actions write (registry.state), so any number of replicas converge on the
same split as the controller without talking to each other. An alias moved in the MLflow UI moves
nothing here until the controller has loaded its version and adopted it (or put it back). The
view only moves forward: a state older than the one held (a lagging MLflow replica or store), one
that changed the split without a new generation, or an unreadable ``rollout.state`` is ignored.
While MLflow is down the last known split stays in force and the view says so. The Triton loop asks Triton which
versions are READY (one repository-index call) and reads each newly ready version's config
parameters (its request limits). Handlers read ``view``, an immutable snapshot swapped whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

from core.contract import PARAM_MAX_IMAGE_PIXELS, PARAM_MAX_IMAGES, PARAM_MAX_NEW_TOKENS, PARAM_TEMPERATURE, PARAM_TOP_P
from core.names import parse_served_name, served_model_name
from registry.events import Event
from registry.state import RolloutState
from serving.gateway.errors import RegistryUnavailableError, UpstreamError, UpstreamTimeoutError
from serving.gateway.registry_client import RegistryPort
from serving.gateway.routing import Split
from serving.gateway.upstream import Sampling, Upstream

log = logging.getLogger(__name__)

#: Polls that re-read the history after a generation change until its event shows up (tags moved
#: without an action, e.g. by hand, have no event: stop asking after these).
HISTORY_REREADS = 10
#: How stale the controller's report may be before a status-page view asks MLflow again.
CONTROLLER_REFRESH_S = 5.0


@dataclass(frozen=True, slots=True)
class VersionConfig:
    """A served version's own limits, from its ``config.pbtxt`` parameters (None: not declared)."""

    max_images: int | None = None
    max_image_pixels: int | None = None
    max_new_tokens: int | None = None
    # Its sampling defaults: the gateway sends them when a request has none, so every request carries
    # the same inputs (Triton batches only those).
    temperature: float | None = None
    top_p: float | None = None

    @classmethod
    def from_parameters(cls, parameters: dict[str, str]) -> VersionConfig:
        def number(key: str) -> int | None:
            value = parameters.get(key, "")
            return int(value) if value.isascii() and value.isdigit() else None

        def real(key: str) -> float | None:
            try:
                return float(parameters[key])
            except (KeyError, ValueError):
                return None

        return cls(
            number(PARAM_MAX_IMAGES),
            number(PARAM_MAX_IMAGE_PIXELS),
            number(PARAM_MAX_NEW_TOKENS),
            real(PARAM_TEMPERATURE),
            real(PARAM_TOP_P),
        )

    def fill(self, sampling: Sampling) -> Sampling:
        """What to send this version: the token cap lowered to its maximum, its own defaults where unset."""
        return replace(
            sampling,
            max_tokens=self.token_cap(sampling.max_tokens),
            temperature=self.temperature if sampling.temperature is None else sampling.temperature,
            top_p=self.top_p if sampling.top_p is None else sampling.top_p,
        )

    def token_cap(self, requested: int | None) -> int | None:
        """The ``max_tokens`` to send: the request's, lowered to this version's MAX_NEW_TOKENS."""
        if requested is None:
            return self.max_new_tokens
        return min(requested, self.max_new_tokens) if self.max_new_tokens is not None else requested


@dataclass(frozen=True, slots=True)
class Health:
    """One dependency's reachability: ``error`` is the last failure while it is down."""

    reachable: bool = False
    error: str | None = "not checked yet"
    last_ok: float | None = None
    down_since: float | None = None

    def ok(self) -> Health:
        return Health(True, None, time.time(), None)

    def failed(self, error: str) -> Health:
        return Health(False, error, self.last_ok, self.down_since or time.time())


@dataclass(frozen=True, slots=True)
class View:
    """Everything a request handler needs, consistent with itself."""

    model: str
    state: RolloutState | None = None
    ready: dict[int, VersionConfig] = field(default_factory=dict)
    registry: Health = Health()
    triton: Health = Health()
    history: tuple[Event, ...] = ()
    controller: dict[str, Any] | None = None

    @property
    def split(self) -> Split:
        aliases = self.state.aliases if self.state is not None else {}
        weight = self.state.canary_weight if self.state is not None else 0
        return Split(aliases.get("champion"), aliases.get("canary"), weight, frozenset(self.ready))

    def alias(self, name: str) -> int | None:
        return self.state.aliases.get(name) if self.state is not None else None


class Reconciler:
    """Owns the view; ``run`` is the background task; ``sync_registry`` also runs after an admin action."""

    def __init__(
        self,
        registry: RegistryPort,
        upstream: Upstream,
        *,
        registry_poll_s: float,
        triton_poll_s: float,
        history_limit: int,
    ) -> None:
        self.registry = registry
        self.upstream = upstream
        self.registry_poll_s = registry_poll_s
        self.triton_poll_s = triton_poll_s
        self.history_limit = history_limit
        self.view = View(model=registry.model)
        self._triton_wake = asyncio.Event()
        self._history_stale = True
        self._history_rereads = 0
        self._controller_read = -CONTROLLER_REFRESH_S
        self._controller_task: asyncio.Task[None] | None = None
        self._ignored: str | None = None  # why the last registry read was ignored (logged once)

    async def run(self) -> None:
        await asyncio.gather(self._registry_loop(), self._triton_loop())

    async def sync(self) -> None:
        """One registry read and one Triton read, now: what a replica does before it takes traffic."""
        await self._guarded(self.sync_registry, "registry")
        await self._guarded(self.sync_triton, "Triton")

    def mark_not_ready(self, version: int) -> None:
        """A request found ``version`` not ready: stop routing to it until Triton says otherwise."""
        if version in self.view.ready:
            ready = {v: c for v, c in self.view.ready.items() if v != version}
            self.view = replace(self.view, ready=ready)
            log.warning("v%d is not ready in Triton; routing around it", version)
        self._triton_wake.set()

    async def sync_registry(self) -> None:
        """One registry read; the split moves only to a newer generation (see the module docstring)."""
        try:
            state = await asyncio.to_thread(self.registry.read_state)
        except RegistryUnavailableError as exc:
            if self.view.registry.reachable:
                log.warning("MLflow unreachable; serving the last known split (%s): %s", self._describe(), exc.message)
            self.view = replace(self.view, registry=self.view.registry.failed(exc.message))
            return
        if not self.view.registry.reachable and self.view.registry.last_ok is not None:
            log.info("MLflow reachable again")
        before = self.view.state
        self.view = replace(self.view, registry=self.view.registry.ok())
        if self._takes(before, state):
            if state is not None and not _routable(state, self.view.ready):
                # The controller loads a version before it names it: see it ready before routing to it.
                await self._guarded(self.sync_triton, "Triton")
            self.view = replace(self.view, state=state)
            if before is None or state is None or state.generation != before.generation:
                log.info("rollout state: %s (generation %s)", self._describe(), state.generation if state else "-")
                self._history_stale = True
                self._history_rereads = HISTORY_REREADS
        if self._history_stale:
            await self.read_history()

    def _takes(self, before: RolloutState | None, state: RolloutState | None) -> bool:
        """Whether a read replaces the view's state: only forward, and never to an unreadable one."""
        if state == before:
            return False
        if state is None or before is None or before.damaged is not None:
            return True  # model gone, first read (even of a damaged state: better than no split), or repaired
        ignored = None
        if state.damaged is not None:
            ignored = f"{state.damaged}; keeping generation {before.generation} until it is restored"
        elif state.generation < before.generation:
            ignored = f"generation {state.generation} is older than the {before.generation} held"
        elif state.generation == before.generation and _split_of(state) != _split_of(before):
            ignored = f"the split changed without a new generation ({state.describe()})"
        if ignored is None:
            return True
        if ignored != self._ignored:
            log.warning("ignoring a registry read: %s", ignored)
        self._ignored = ignored
        return False

    async def sync_triton(self) -> None:
        """One repository-index call; configs are read for versions that just became ready."""
        try:
            names = await self.upstream.ready_models()
            served = {
                parsed[1]
                for name in names
                if (parsed := parse_served_name(name)) is not None and parsed[0] == self.view.model
            }
            ready = {v: c for v, c in self.view.ready.items() if v in served}
            for version in sorted(served - set(ready)):
                parameters = await self.upstream.model_parameters(served_model_name(self.view.model, version))
                ready[version] = VersionConfig.from_parameters(parameters)
                log.info("v%d is ready in Triton", version)
        except UpstreamTimeoutError as exc:
            # Alive but slow: Triton holds repository calls while it loads a model. Keep routing.
            log.info("Triton's repository index is slow (%s); keeping the ready versions", exc.message)
            self.view = replace(self.view, triton=self.view.triton.failed(exc.message))
            return
        except UpstreamError as exc:
            if self.view.triton.reachable:
                log.warning("Triton unreachable, no version is routable: %s", exc.message)
            self.view = replace(self.view, ready={}, triton=self.view.triton.failed(exc.message))
            return
        self.view = replace(self.view, ready=ready, triton=self.view.triton.ok())

    def want_controller(self) -> None:
        """A status view wants the controller's report: re-read it in the background when it is stale."""
        if time.monotonic() - self._controller_read < CONTROLLER_REFRESH_S:
            return
        if self._controller_task is not None and not self._controller_task.done():
            return
        self._controller_read = time.monotonic()
        self._controller_task = asyncio.create_task(self._read_controller())

    async def _read_controller(self) -> None:
        with contextlib.suppress(RegistryUnavailableError):
            report = await asyncio.to_thread(self.registry.controller)
            self.view = replace(self.view, controller=report)

    async def read_history(self) -> None:
        """Re-read the recorded events; retried for a few polls until the newest one matches the generation.

        An action moves the aliases (and the generation) first and records its event last, so a poll
        in between sees the new generation and not yet its event.
        """
        try:
            found = await asyncio.to_thread(self.registry.history, self.history_limit)
        except RegistryUnavailableError:
            return
        self.view = replace(self.view, history=tuple(found))
        state = self.view.state
        behind = state is not None and (not found or found[0].generation < state.generation)
        if behind and self._history_rereads > 0:
            self._history_rereads -= 1
        else:
            self._history_stale = False

    async def _registry_loop(self) -> None:
        while True:
            await self._guarded(self.sync_registry, "registry")
            await asyncio.sleep(self.registry_poll_s)

    async def _triton_loop(self) -> None:
        while True:
            await self._guarded(self.sync_triton, "Triton")
            await _wait(self._triton_wake, self.triton_poll_s)

    async def _guarded(self, step: Any, what: str) -> None:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug in one poll must not stop reconciling for the life of the process
            log.exception("reconciling with the %s failed; retrying next poll", what)

    def _describe(self) -> str:
        return self.view.state.describe() if self.view.state is not None else "no registered model"


def _split_of(state: RolloutState) -> tuple[dict[str, int], int]:
    return state.aliases, state.canary_weight


def _routable(state: RolloutState, ready: dict[int, VersionConfig]) -> bool:
    """Whether every version ``state`` sends traffic to is already known to be ready."""
    champion, canary = state.aliases.get("champion"), state.aliases.get("canary")
    wanted = {champion} | ({canary} if canary is not None and state.canary_weight > 0 else set())
    return all(v is None or v in ready for v in wanted)


async def _wait(wake: asyncio.Event, timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wake.wait(), timeout=timeout_s)
    wake.clear()
