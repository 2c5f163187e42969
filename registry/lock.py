"""A rollout lock built on a uniqueness constraint MLflow already enforces: registered-model names.

MLflow has no transactions or compare-and-set on tags or aliases, but creating a registered model
whose name exists fails (a primary key in the SQL store), whether the callers are threads,
processes or machines. So an action holds the lock by creating ``<model>.rollout-lock`` and releases
it by deleting it; the holder's identity sits in that model's tags for the error message. An
action that died while holding the lock leaves it behind: ``python -m registry unlock`` clears it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from mlflow.exceptions import MlflowException

from registry.errors import ConcurrentChangeError, NotFoundError
from registry.events import now
from registry.store import ALREADY_EXISTS, DOES_NOT_EXIST, Store, error_code

log = logging.getLogger(__name__)

TOKEN_TAG = "lock.token"
HOLDER_TAG = "lock.holder"
ACTION_TAG = "lock.action"
SINCE_TAG = "lock.since"


@contextmanager
def rollout_lock(store: Store, holder: str, action: str) -> Iterator[str]:
    """Hold the model's rollout lock for the block; raise ConcurrentChangeError if another holds it."""
    name = store.settings.lock_model_name
    token = uuid.uuid4().hex
    tags = {TOKEN_TAG: token, HOLDER_TAG: holder, ACTION_TAG: action, SINCE_TAG: now().isoformat()}
    try:
        store.client.create_registered_model(
            name, tags=tags, description=f"Held while `{action}` changes {store.model}'s aliases."
        )
    except MlflowException as exc:
        if error_code(exc) != ALREADY_EXISTS:
            raise
        raise ConcurrentChangeError(
            f"another action is changing {store.model} ({describe_holder(store)}); "
            "run `python -m registry status` and retry. If that action died, clear its lock with "
            "`python -m registry unlock`."
        ) from exc
    try:
        yield token
    finally:
        _release(store, name, token)


def _release(store: Store, name: str, token: str) -> None:
    try:
        current = store.client.get_registered_model(name).tags.get(TOKEN_TAG)
        if current == token:
            store.client.delete_registered_model(name)
        else:
            log.warning("rollout lock %s was taken over (token %s); leaving it", name, current)
    except MlflowException as exc:
        if error_code(exc) != DOES_NOT_EXIST:
            raise
        log.warning("rollout lock %s vanished while held (someone ran `unlock`)", name)


def describe_holder(store: Store) -> str:
    try:
        tags = store.client.get_registered_model(store.settings.lock_model_name).tags
    except MlflowException as exc:
        if error_code(exc) == DOES_NOT_EXIST:
            return "its lock was just released"
        raise
    return f"`{tags.get(ACTION_TAG, '?')}` by {tags.get(HOLDER_TAG, '?')} since {tags.get(SINCE_TAG, '?')}"


def force_unlock(store: Store) -> str:
    """Remove a stale lock; return who held it."""
    holder = describe_holder(store)
    try:
        store.client.delete_registered_model(store.settings.lock_model_name)
    except MlflowException as exc:
        if error_code(exc) == DOES_NOT_EXIST:
            raise NotFoundError(f"{store.model} has no rollout lock to clear") from exc
        raise
    return holder
