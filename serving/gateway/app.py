"""``create_app``: the gateway's FastAPI application, wired from settings (or from fakes, in tests).

Routes: ``POST /v1/chat/completions``, ``GET /v1/models`` and ``GET /v1/models/{model}``
(OpenAI-compatible), ``/healthz``, ``/readyz``, ``/metrics``, the status page ``/`` with
``/status.json``, and the admin API under ``/admin/``. Only the OpenAI routes and ``/healthz`` are
public: the edge's public listener serves exactly those (``serving.edge.config.PUBLIC_PATHS`` and
``PUBLIC_PREFIXES``); the rest are for operators, on its internal listener.

An outer ASGI middleware gives every response an ``X-Request-Id`` (the client's, when it sends a
sane one), adds ``X-Model-Version`` where a version was chosen, counts every answer in
``gateway_requests_total``, tracks requests in flight for a graceful drain (``serving.gateway.drain``),
and turns anything unforeseen into a plain 500 without a traceback. A client that goes away while
its body is read is counted as 499 (nginx's "client closed request"), not as a server error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.settings import RegistrySettings
from serving.gateway import admin, errors, openapi_doc, status
from serving.gateway import openai_schema as wire
from serving.gateway.chat import ChatService
from serving.gateway.drain import Drain
from serving.gateway.faults import Faults
from serving.gateway.images import RemoteImages
from serving.gateway.lograte import RateLimitedLog, flush_all
from serving.gateway.metrics import Metrics, Window
from serving.gateway.reconcile import Reconciler
from serving.gateway.registry_client import MlflowRegistry, RegistryPort
from serving.gateway.settings import GatewaySettings
from serving.gateway.upstream import TritonUpstream, Upstream

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: The status a request gets when its client disconnected before the answer (nginx's code for it).
CLIENT_CLOSED = 499
_aggregated = RateLimitedLog(log)


class EdgeMiddleware:
    """Request ids, the version header, per-route counts, and the last line of defence."""

    def __init__(self, app: ASGIApp, metrics: Metrics, paths: set[str], drain: Drain) -> None:
        self.app = app
        self.metrics = metrics
        self.drain = drain
        # The app's route paths: a request's label is its route, never a client-chosen path.
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((value for name, value in scope["headers"] if name == b"x-request-id"), b"").decode("latin-1")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status_code = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                headers = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
                if "model_version" in state:
                    headers.append((b"x-model-version", str(state["model_version"]).encode()))
                if self.drain.draining:
                    # The client (nginx) drops this connection after the answer instead of reusing it.
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        self.drain.request_started()
        try:
            await self.app(scope, receive, send_with_headers)
        except ClientDisconnect:
            # Gone before its body arrived: nothing to answer, nothing wrong with this replica.
            _aggregated.warning(
                "client-disconnect",
                "a client disconnected before sending its whole body (%s %s, request %s)",
                scope["method"],
                scope["path"],
                request_id,
            )
            status_code = status_code or CLIENT_CLOSED
        except Exception:
            log.exception("unhandled error in %s %s (request %s)", scope["method"], scope["path"], request_id)
            if status_code:
                raise  # the answer has begun; the server closes the connection
            body = errors.error_body(
                f"internal error; quote request id {request_id}", "server_error", None, "internal_error"
            )
            await Response(body, status_code=500, media_type="application/json")(scope, receive, send_with_headers)
        finally:
            self.drain.request_finished()
            path = scope["path"]
            self.metrics.request(path if path in self.paths else "unmatched", status_code or 500)


def create_app(
    settings: GatewaySettings,
    registry_settings: RegistrySettings | None = None,
    *,
    registry: RegistryPort | None = None,
    upstream: Upstream | None = None,
    drain: Drain | None = None,
) -> FastAPI:
    """The app; ``registry`` and ``upstream`` default to MLflow (``RegistrySettings()``) and Triton;
    ``drain`` is what the server's SIGTERM handler starts (``app.state.drain``)."""
    if registry is None:
        registry = MlflowRegistry(registry_settings if registry_settings is not None else RegistrySettings())
    if upstream is None:
        upstream = TritonUpstream(
            settings.triton_url, settings.upstream_timeout_s, connections=settings.upstream_connections
        )
    metrics, faults = Metrics(), Faults()
    drain = drain if drain is not None else Drain()
    window = Window(metrics, settings.status_window_s)
    reconciler = Reconciler(
        registry,
        upstream,
        registry_poll_s=settings.registry_poll_s,
        triton_poll_s=settings.triton_poll_s,
        history_limit=settings.history_limit,
    )
    images = RemoteImages(settings.image_url_hosts, settings.image_fetch_timeout_s, settings.max_image_bytes)
    chat = ChatService(
        model=registry.model,
        upstream=upstream,
        reconciler=reconciler,
        metrics=metrics,
        faults=faults,
        images=images,
        timeout_s=settings.upstream_timeout_s,
        max_body_bytes=settings.max_body_bytes,
        max_image_bytes=settings.max_image_bytes,
        shadow_percent=settings.shadow_percent,
        shadow_concurrency=settings.shadow_concurrency,
    )
    token = settings.admin_token_bytes
    if token is None:
        log.warning("the admin API is open without a token (GATEWAY_DEV=true); never run so in production")
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await upstream.start()
        # Listen only once the split is known: a replica that takes requests before its first
        # reconcile answers them 503 (no champion known), and the edge does not retry a 503.
        await reconciler.sync()
        tasks = [
            asyncio.create_task(reconciler.run()),
            asyncio.create_task(_snapshots(window)),
            asyncio.create_task(_flush_logs()),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await chat.shadow.close()
            await images.close()
            await upstream.close()

    app = FastAPI(title="Canary gateway", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.chat, app.state.reconciler, app.state.metrics, app.state.faults = chat, reconciler, metrics, faults
    app.state.drain = drain
    errors.install(app)
    paths: set[str] = set()
    app.add_middleware(EdgeMiddleware, metrics=metrics, paths=paths, drain=drain)

    async def chat_completions(request: Request) -> Response:
        return await chat.handle(request)

    # The hot path first, as a plain route: no dependency solving, matched before anything else.
    app.add_route("/v1/chat/completions", chat_completions, methods=["POST"], include_in_schema=False)

    @app.get("/v1/models")
    async def list_models() -> Response:
        versions = sorted(reconciler.view.ready)
        return Response(wire.model_list(registry.model, versions, started), media_type="application/json")

    # ``:path``: an id with a slash in it is a model this gateway lacks (404 model_not_found), not a missing route.
    @app.get("/v1/models/{model:path}")
    async def retrieve_model(model: str) -> Response:
        versions = sorted(reconciler.view.ready)
        return Response(wire.model_object(registry.model, versions, started, model), media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        ready, detail = readiness(reconciler, drain)
        return Response(orjson.dumps(detail), status_code=200 if ready else 503, media_type="application/json")

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    app.include_router(admin.make_router(token, registry, reconciler, faults))
    app.include_router(status.make_router(reconciler, metrics, window, faults))
    app.openapi = lambda: openapi_doc.document(app)  # type: ignore[method-assign]
    paths.update(str(route.path) for route in app.routes if hasattr(route, "path"))
    return app


def readiness(reconciler: Reconciler, drain: Drain | None = None) -> tuple[bool, dict[str, Any]]:
    """Ready when a champion is known, Triton reports it READY and the replica is not draining; the
    detail says why not. For operators only (the edge's internal listener): it names Triton's errors."""
    view = reconciler.view
    champion = view.alias("champion")
    if drain is not None and drain.draining:
        reason = "shutting down: finishing the requests in flight"
    elif champion is None:
        reason = "no champion known" + ("" if view.registry.reachable else " (MLflow unreachable)")
    elif champion not in view.ready:
        reason = f"champion v{champion} is not READY in Triton"
    else:
        reason = None
    registry: dict[str, Any] = {"reachable": view.registry.reachable, "error": view.registry.error}
    if not view.registry.reachable and view.state is not None:
        registry["note"] = "MLflow is unreachable: serving the last known split"
    detail = {
        "ready": reason is None,
        "reason": reason,
        "model": view.model,
        "champion": champion,
        "canary": view.alias("canary"),
        "canary_weight": view.state.canary_weight if view.state is not None else 0,
        "generation": view.state.generation if view.state is not None else None,
        "registry": registry,
        "triton": {"reachable": view.triton.reachable, "error": view.triton.error, "ready": sorted(view.ready)},
    }
    return reason is None, detail


async def _snapshots(window: Window) -> None:
    while True:
        await asyncio.sleep(window.step_s)
        window.snapshot()


async def _flush_logs() -> None:
    """Aggregated warnings write their counts on time, not only when the next one arrives."""
    while True:
        await asyncio.sleep(1.0)
        flush_all()
