"""The controller's part in outside changes: an alias or the weight tag moved in MLflow, not by an action.

Each tick, before Triton is reconciled or the canary judged, the state the controller read is
compared with MLflow's aliases and weight tag (both came in the same ``get_registered_model``
answer). On a difference it asks the history which named versions ever passed validation, loads in
Triton every validated version the change would make champion or canary (materialized with every
file checked against its manifest, as any served version), and only then settles the change through
``registry.rollout.settle_outside``: adopted as the action it amounts to, or put back, with the
reason recorded. Traffic moves when that action writes ``rollout.state``, so it never reaches a
version that is not loaded, and nothing is unloaded while a gateway still routes to it (a version
that leaves its role keeps the usual unload grace). A damaged or removed ``rollout.state`` is
restored from the history first.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from registry import events, outside, rollout
from registry.errors import RegistryError
from registry.state import RolloutState, read_state

if TYPE_CHECKING:
    from serving.rollout.controller import Controller

log = logging.getLogger(__name__)


class _TritonUnreachableError(Exception):
    """Triton did not answer: settle the change on a later tick rather than refuse it for this."""


class Adoption:
    """Settles outside changes for one controller (``settle`` once per tick, while it holds the lease)."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def settle(self, state: RolloutState) -> RolloutState | None:
        """The state the rest of the tick acts on: ``state`` when MLflow agrees with it, else the state
        after settling; None when ``rollout.state`` is unusable and could not be restored (act on nothing)."""
        if state.damaged is not None:
            return self._restore(state)
        changes = state.outside_changes()
        if not changes:
            return state
        controller, store = self.controller, self.controller.store
        described = state.describe_outside()
        log.warning("outside change in MLflow: %s", described)
        controller._set_phase(f"outside change: {described}")
        try:
            validated = {version: events.validated(store, version) for version in outside.versions_named(state)}
            serving = {version: self._serve(state, version) for version in outside.to_serve(state, validated)}
            event = rollout.settle_outside(store, controller.actor, outside.Facts(validated, serving))
        except outside.NothingToSettleError:
            return read_state(store)  # settled meanwhile (an action finished its writes)
        except _TritonUnreachableError as exc:
            log.warning("outside change left for a later tick: %s", exc)
            return state
        except RegistryError as exc:  # the lock is taken or MLflow moved again: the next tick looks again
            log.warning("outside change not settled yet: %s", exc)
            return state
        log.warning("%s: %s", event.summary, event.reason)
        return read_state(store)

    def _serve(self, state: RolloutState, version: int) -> str | None:
        """Load ``version`` in Triton (files verified) unless it is loaded; None when it serves, else why not.

        A version still loaded left its role within the unload grace (the controller unloads in its
        own tick and waits until Triton is done, so nothing it listed is half unloaded): loaded and
        verified then, it serves again without a reload, as ``_reconcile_triton`` treats it.
        """
        controller = self.controller
        try:
            loaded = controller.triton.loaded()
        except Exception as exc:  # Triton down or restarting: no verdict on the version from that
            raise _TritonUnreachableError(f"cannot list Triton's models: {exc}") from exc
        if controller._name(version) in loaded:
            return None
        controller._load(state, version)
        return controller.served.failed.get(version)

    def _restore(self, state: RolloutState) -> RolloutState | None:
        store = self.controller.store
        log.warning("rollout.state of %s is unusable (%s); restoring it", store.model, state.damaged)
        try:
            event = rollout.restore_state(store, self.controller.actor)
        except outside.NothingToSettleError:
            pass
        except RegistryError as exc:
            self.controller._set_phase("rollout.state unusable")
            log.warning("could not restore rollout.state: %s", exc)
            return None
        else:
            log.warning("%s", event.summary)
        restored = read_state(store)
        return None if restored.damaged is not None else restored
