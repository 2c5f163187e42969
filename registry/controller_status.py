"""What the rollout controller last saw and decided, kept on the registered model for every reader.

The controller writes one JSON tag (its phase, the current window's figures and verdict, who holds
the controller lease); gateways show it on their status page. It is a report, not state: the
rollout itself is the aliases and tags that ``registry.rollout`` moves.
"""

from __future__ import annotations

import json
from typing import Any

from mlflow.exceptions import MlflowException

from registry.store import Store

STATUS_TAG = "rollout.controller"


def publish(store: Store, status: dict[str, Any]) -> None:
    """Replace the controller's status (JSON, keys sorted so identical reports are identical tags)."""
    store.client.set_registered_model_tag(store.model, STATUS_TAG, json.dumps(status, sort_keys=True, default=str))


def read(store: Store) -> dict[str, Any] | None:
    """The last status the controller published, or None (no controller yet, or unreadable)."""
    try:
        tags = store.client.get_registered_model(store.model).tags or {}
    except MlflowException:
        return None
    return parse(tags.get(STATUS_TAG))


def parse(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
