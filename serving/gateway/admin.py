"""The admin API under ``/admin/``: rollout actions through the registry, and fault injection.

Every route needs ``Authorization: Bearer <GATEWAY_ADMIN_TOKEN>`` (compared in constant time;
the token is never logged). The rollout actions call the same ``registry.rollout`` functions as
``python -m registry``, in a thread, then re-read the registry so this replica moves at once
(the others follow within their poll interval). Who acted: the ``X-Actor`` header, recorded in the
registry's history as ``<actor> (gateway admin API)``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
from collections.abc import Callable, Coroutine
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from registry.events import Actor
from serving.gateway.errors import UnauthorizedError
from serving.gateway.faults import FaultRule, Faults
from serving.gateway.reconcile import Reconciler, View
from serving.gateway.registry_client import Action, RegistryPort

_ACTOR = re.compile(r"[\w .@+-]{1,100}")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, max_length=2000)


class PromoteBody(_Body):
    to: Literal["canary", "champion"]
    version: int | None = Field(None, ge=1)
    weight: int = Field(0, ge=0, le=100)


class WeightBody(_Body):
    weight: int = Field(ge=0, le=100)
    version: int | None = Field(None, ge=1)


class StepBody(_Body):
    version: int | None = Field(None, ge=1)
    # Default: params.yaml's rollout.steps, as the CLI uses.
    steps: list[int] | None = Field(None, min_length=1)


class AbortBody(_Body):
    version: int | None = Field(None, ge=1)


def state_json(view: View) -> dict[str, Any]:
    """The replica's view of the rollout, for ``GET /admin/state`` and the answers of the actions."""
    state = view.state
    return {
        "model": view.model,
        "aliases": dict(state.aliases) if state else {},
        "canary_weight": state.canary_weight if state else 0,
        "paused": state.paused if state else False,
        "generation": state.generation if state else None,
        "last_event": state.last_event if state else None,
        "ready_versions": sorted(view.ready),
        "registry": {"reachable": view.registry.reachable, "error": view.registry.error},
        "triton": {"reachable": view.triton.reachable, "error": view.triton.error},
    }


def make_router(token: bytes | None, registry: RegistryPort, reconciler: Reconciler, faults: Faults) -> APIRouter:
    """The ``/admin`` routes; ``token`` None leaves them open (dev mode without a token)."""
    expected = hashlib.sha256(token).digest() if token is not None else None

    def authorize(request: Request) -> None:
        if expected is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # Equal-length digests: the comparison's time says nothing about the token, not even its length.
        digest = hashlib.sha256(given.strip().encode("utf-8", "surrogatepass")).digest()
        if not (hmac.compare_digest(digest, expected) and scheme.lower() == "bearer"):
            raise UnauthorizedError("the admin API needs `Authorization: Bearer <GATEWAY_ADMIN_TOKEN>`")

    class AuthorizedRoute(APIRoute):
        # Before FastAPI reads the body: without the token, even malformed JSON is a 401, never a 400.
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def checked(request: Request) -> Response:
                authorize(request)
                return await handler(request)

            return checked

    router = APIRouter(prefix="/admin", route_class=AuthorizedRoute)

    async def act(request: Request, action: Action) -> dict[str, Any]:
        claimed = request.headers.get("x-actor", "admin")
        actor = Actor(name=f"{claimed if _ACTOR.fullmatch(claimed) else 'admin'} (gateway admin API)")
        event = await asyncio.to_thread(registry.act, action, actor)
        # This replica moves at once, and shows the event it just recorded.
        await reconciler.sync_registry()
        await reconciler.read_history()
        return {"event": event.model_dump(mode="json"), "state": state_json(reconciler.view)}

    @router.get("/state")
    async def get_state() -> dict[str, Any]:
        return {**state_json(reconciler.view), "faults": [rule.model_dump() for rule in faults.rules()]}

    @router.post("/promote")
    async def promote(request: Request, body: PromoteBody) -> dict[str, Any]:
        name: Literal["promote-canary", "promote-champion"] = (
            "promote-canary" if body.to == "canary" else "promote-champion"
        )
        return await act(request, Action(name, version=body.version, weight=body.weight, reason=body.reason))

    @router.post("/weight")
    async def weight(request: Request, body: WeightBody) -> dict[str, Any]:
        return await act(request, Action("weight", version=body.version, weight=body.weight, reason=body.reason))

    @router.post("/step")
    async def step(request: Request, body: StepBody) -> dict[str, Any]:
        steps = tuple(body.steps) if body.steps is not None else None
        return await act(request, Action("step", version=body.version, steps=steps, reason=body.reason))

    @router.post("/pause")
    async def pause(request: Request, body: _Body | None = None) -> dict[str, Any]:
        return await act(request, Action("pause", reason=body.reason if body else None))

    @router.post("/resume")
    async def resume(request: Request) -> dict[str, Any]:
        return await act(request, Action("resume"))

    @router.post("/abort")
    async def abort(request: Request, body: AbortBody | None = None) -> dict[str, Any]:
        version, reason = (body.version, body.reason) if body else (None, None)
        return await act(request, Action("abort", version=version, reason=reason))

    @router.get("/faults")
    async def get_faults() -> list[dict[str, Any]]:
        return [rule.model_dump() for rule in faults.rules()]

    @router.post("/faults")
    async def set_fault(rule: FaultRule) -> list[dict[str, Any]]:
        faults.set(rule)
        return [r.model_dump() for r in faults.rules()]

    @router.delete("/faults")
    async def clear_faults() -> list[dict[str, Any]]:
        faults.clear()
        return []

    return router
