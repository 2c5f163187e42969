"""The gateway's door to the registry: reads for reconciling, and the rollout actions of the admin API.

Every call blocks (MLflow's client is synchronous), so callers run them in a thread. The actions
are the same ``registry.rollout`` functions the CLI calls. Registry and MLflow errors come out as
the gateway's domain errors: a refused transition or a concurrent change is ``RegistryConflictError``,
a missing model or version ``RegistryNotFoundError``, MLflow not answering ``RegistryUnavailableError``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from mlflow.exceptions import MlflowException

from core.rollout_policy import RolloutPolicy
from registry import controller_status, events, rollout
from registry.errors import ConcurrentChangeError, InvalidTransitionError, NotFoundError, RegistryError
from registry.events import Actor, Event
from registry.settings import RegistrySettings
from registry.state import RolloutState, read_state
from registry.store import DOES_NOT_EXIST, Store, error_code
from serving.gateway.errors import GatewayError, RegistryConflictError, RegistryNotFoundError, RegistryUnavailableError

ActionName = Literal["promote-canary", "promote-champion", "weight", "step", "pause", "resume", "abort"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Action:
    """One admin request, as the registry action it becomes."""

    name: ActionName
    version: int | None = None
    weight: int | None = None
    steps: tuple[int, ...] | None = None
    reason: str | None = None


class RegistryPort(Protocol):
    """What the gateway asks of the registry (``MlflowRegistry``; tests bring a fake)."""

    @property
    def model(self) -> str: ...
    def read_state(self) -> RolloutState | None: ...
    def history(self, limit: int) -> list[Event]: ...
    def controller(self) -> dict[str, Any] | None: ...
    def act(self, action: Action, actor: Actor) -> Event: ...


class MlflowRegistry:
    """The real registry: ``registry.state``, ``registry.events`` and ``registry.rollout`` over one store."""

    def __init__(self, settings: RegistrySettings) -> None:
        self.settings = settings
        self._store: Store | None = None

    @property
    def model(self) -> str:
        return self.settings.model_name

    @property
    def store(self) -> Store:
        # Built on first use, in the worker thread: constructing MLflow's client is not free.
        if self._store is None:
            self._store = Store(self.settings)
        return self._store

    def read_state(self) -> RolloutState | None:
        """The rollout state (one ``get_registered_model`` call), or None while the model is not registered."""
        try:
            return _translated(lambda: read_state(self.store))
        except RegistryNotFoundError:
            return None

    def history(self, limit: int) -> list[Event]:
        return _translated(lambda: events.history(self.store, limit))

    def controller(self) -> dict[str, Any] | None:
        return _translated(lambda: controller_status.read(self.store))

    def act(self, action: Action, actor: Actor) -> Event:
        return _translated(lambda: self._act(action, actor))

    def _act(self, action: Action, actor: Actor) -> Event:
        store, version, reason = self.store, action.version, action.reason
        match action.name:
            case "promote-canary":
                return rollout.promote_to_canary(store, actor, version, action.weight or 0, reason=reason)
            case "promote-champion":
                return rollout.promote_to_champion(store, actor, version, reason=reason)
            case "weight":
                if action.weight is None:
                    raise InvalidTransitionError("a weight is required")
                return rollout.set_weight(store, actor, action.weight, version, reason=reason)
            case "step":
                steps = action.steps or tuple(RolloutPolicy().steps)
                return rollout.step(store, actor, steps, version, reason=reason)
            case "pause":
                return rollout.pause(store, actor, reason=reason)
            case "resume":
                return rollout.resume(store, actor)
            case "abort":
                return rollout.abort(store, actor, version, reason=reason)
        raise InvalidTransitionError(f"unknown action {action.name!r}")


def _translated(call: Callable[[], T]) -> T:
    try:
        return call()
    except GatewayError:
        raise
    except NotFoundError as exc:
        raise RegistryNotFoundError(str(exc)) from exc
    except (InvalidTransitionError, ConcurrentChangeError) as exc:
        raise RegistryConflictError(str(exc)) from exc
    except RegistryError as exc:
        raise RegistryUnavailableError(str(exc)) from exc
    except MlflowException as exc:
        if error_code(exc) == DOES_NOT_EXIST:
            raise RegistryNotFoundError(exc.message) from exc
        raise RegistryUnavailableError(f"MLflow did not answer: {_short(exc.message)}") from exc
    except OSError as exc:
        raise RegistryUnavailableError(f"MLflow did not answer: {_short(str(exc))}") from exc


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
