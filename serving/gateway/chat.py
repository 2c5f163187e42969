"""The hot path of ``POST /v1/chat/completions``: read, route, check, ask Triton, retry, answer.

Order matters for the headers: the request is routed as soon as its session key is known, so even
a refused request says which version it would have reached (``X-Model-Version``; ``none`` when no
version could be chosen). A canary failure (Triton 5xx, timeout, connection error, not ready, an
injected fault) is answered by the champion and counted against the canary; a champion failure
and a pinned version's failure are the client's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from core.names import parse_served_name, served_model_name
from serving.gateway import openai_schema as wire
from serving.gateway.errors import (
    GatewayError,
    InvalidRequestError,
    ModelNotFoundError,
    PayloadTooLargeError,
    UpstreamError,
    UpstreamNotReadyError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
    validation_message,
)
from serving.gateway.faults import Faults
from serving.gateway.images import ImageInfo, RemoteImages, check_data_uri, check_limits
from serving.gateway.lograte import RateLimitedLog
from serving.gateway.metrics import Metrics
from serving.gateway.reconcile import Reconciler, VersionConfig, View
from serving.gateway.routing import Route, choose, parse_pin
from serving.gateway.shadow import Shadow
from serving.gateway.upstream import Inference, Upstream
from serving.telemetry import OUTCOME_ERROR, OUTCOME_OK, OUTCOME_REJECTED

log = logging.getLogger(__name__)
_aggregated = RateLimitedLog(log)  # a canary failing every request must not log a line per request

SESSION_HEADER = "x-session-id"
PIN_HEADER = "x-model-version"


class ChatService:
    """Everything one chat request touches; one instance per app."""

    def __init__(
        self,
        *,
        model: str,
        upstream: Upstream,
        reconciler: Reconciler,
        metrics: Metrics,
        faults: Faults,
        images: RemoteImages,
        timeout_s: float,
        max_body_bytes: int,
        max_image_bytes: int,
        shadow_percent: float,
        shadow_concurrency: int,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.model = model
        self.upstream = upstream
        self.reconciler = reconciler
        self.metrics = metrics
        self.faults = faults
        self.images = images
        # One timeout for every attempt, canary or champion: a shorter cut for the canary would turn
        # its slow answers into errors and hide its slowest latencies from the verdict.
        self.timeout_s = timeout_s
        self.max_body_bytes = max_body_bytes
        self.max_image_bytes = max_image_bytes
        self.shadow = Shadow(shadow_percent, shadow_concurrency, self.call, metrics)
        self._draw = draw
        self._names: dict[int, str] = {}

    async def handle(self, request: Request) -> Response:
        request.state.model_version = "none"
        view = self.reconciler.view
        pinned = parse_pin(request.headers.get(PIN_HEADER))
        key = request.headers.get(SESSION_HEADER) or None
        try:
            raw = await self._read_json(request)
        except GatewayError:
            self._route_quietly(request, view, key, pinned)
            raise
        user = raw.get("user")
        if key is None and isinstance(user, str) and user:
            key = user
        pinned = self._pin_from_model(raw.get("model"), pinned)
        if not view.ready and not view.triton.reachable:
            raise UpstreamUnavailableError(f"Triton is unreachable ({view.triton.error}); retry shortly")
        route = choose(view.split, key=key, draw=self._draw() * 100, pinned=pinned)
        request.state.model_version = route.version
        try:
            chat = wire.ChatRequest.model_validate(raw)
        except ValidationError as exc:
            raise validation_message(list(exc.errors()), raw) from exc  # type: ignore[arg-type]
        images, urls = await self._images(chat)
        messages = wire.wire_messages(chat, urls)
        answer, version, cap = await self._answer(request, route, view, chat, messages, images)
        if version == view.split.champion and route.reason != "pinned":
            self.shadow.maybe_mirror(view, messages, chat.token_cap, chat.temperature, answer)
        request_id = str(request.state.request_id)
        created = int(time.time())
        if chat.stream:
            include_usage = chat.stream_options is not None and chat.stream_options.include_usage
            events = wire.chunks(request_id, created, self.model, answer, cap, include_usage)
            return Response(b"".join(events), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return Response(wire.completion(request_id, created, self.model, answer, cap), media_type="application/json")

    async def call(
        self,
        version: int,
        messages: bytes,
        max_tokens: int | None,
        temperature: float | None,
        timeout_s: float | None = None,
    ) -> Inference:
        """One attempt on ``version`` (injected faults first), bounded by the upstream timeout; no metrics."""
        name = self._names.get(version)
        if name is None:
            name = self._names[version] = served_model_name(self.model, version)
        limit = self.timeout_s if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(limit):
                await self.faults.apply(version)
                return await self.upstream.infer(name, messages, max_tokens, temperature)
        except TimeoutError as exc:
            raise UpstreamTimeoutError(f"v{version} did not answer within {limit:g} s", version) from exc
        except UpstreamError as exc:
            exc.version = version
            raise

    async def attempt(
        self,
        version: int,
        messages: bytes,
        max_tokens: int | None,
        temperature: float | None,
        *,
        pinned: bool = False,
        retry: bool = False,
    ) -> Inference:
        """``call`` with the per-version counters; pinned and retry attempts are counted apart, never judged."""
        started = time.perf_counter()
        try:
            answer = await self.call(version, messages, max_tokens, temperature)
        except UpstreamRejectedError:
            self.metrics.attempt(version, OUTCOME_REJECTED, pinned=pinned, retry=retry)
            raise
        except UpstreamError as exc:
            self.metrics.attempt(version, OUTCOME_ERROR, pinned=pinned, retry=retry)
            if isinstance(exc, UpstreamNotReadyError):
                self.reconciler.mark_not_ready(version)
            raise
        self.metrics.attempt(version, OUTCOME_OK, time.perf_counter() - started, pinned=pinned, retry=retry)
        return answer

    async def _answer(
        self,
        request: Request,
        route: Route,
        view: View,
        chat: wire.ChatRequest,
        messages: bytes,
        images: list[tuple[str, ImageInfo]],
    ) -> tuple[Inference, int, int | None]:
        cap = self._prepare(view, route.version, chat, images)
        pinned = route.reason == "pinned"
        try:
            return await self.attempt(route.version, messages, cap, chat.temperature, pinned=pinned), route.version, cap
        except UpstreamError as exc:
            if not exc.retryable or route.fallback is None:
                raise
            _aggregated.warning(
                f"canary v{route.version} {exc.code}",
                "canary v%d failed (%s); answering with champion v%d",
                route.version,
                exc.message,
                route.fallback,
            )
            self.metrics.retry()
        request.state.model_version = route.fallback
        cap = self._prepare(view, route.fallback, chat, images)
        # The split sent this request to the canary: the champion's answer for it is not judged.
        return await self.attempt(route.fallback, messages, cap, chat.temperature, retry=True), route.fallback, cap

    def _prepare(
        self, view: View, version: int, chat: wire.ChatRequest, images: list[tuple[str, ImageInfo]]
    ) -> int | None:
        """Apply ``version``'s limits; the token cap to send (the request's, lowered to the version's maximum)."""
        config = view.ready.get(version, VersionConfig())
        check_limits(images, config.max_images, config.max_image_pixels)
        return config.token_cap(chat.token_cap)

    async def _images(self, chat: wire.ChatRequest) -> tuple[list[tuple[str, ImageInfo]], dict[str, str]]:
        found: list[tuple[str, ImageInfo]] = []
        urls: dict[str, str] = {}
        for where, part in chat.image_parts():
            url = part.image_url.url
            if url.startswith("data:"):
                found.append((where, check_data_uri(url, where, self.max_image_bytes)))
            else:
                urls[where], info = await self.images.fetch(url, where)
                found.append((where, info))
        return found, urls

    async def _read_json(self, request: Request) -> dict[str, object]:
        declared = request.headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise PayloadTooLargeError(
                f"the body is {declared} bytes; the limit is {self.max_body_bytes} (GATEWAY_MAX_BODY_BYTES)"
            )
        parts, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise PayloadTooLargeError(f"the body is over {self.max_body_bytes} bytes (GATEWAY_MAX_BODY_BYTES)")
            parts.append(chunk)
        try:
            raw = orjson.loads(b"".join(parts))
        except orjson.JSONDecodeError as exc:
            raise InvalidRequestError(f"the body is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise InvalidRequestError("the body must be a JSON object (an OpenAI chat completion request)")
        return raw

    def _pin_from_model(self, model: object, pinned: int | None) -> int | None:
        """``model`` is the registered model, or ``<model>-v<N>`` (pins N); anything else is a 404."""
        if not isinstance(model, str) or model == self.model:
            return pinned
        parsed = parse_served_name(model)
        if parsed is None or parsed[0] != self.model:
            raise ModelNotFoundError(
                f"the model {model[:100]!r} does not exist here; use {self.model!r} "
                f"(or {self.model}-v<N> for a served version)",
                param="model",
            )
        if pinned is not None and pinned != parsed[1]:
            raise InvalidRequestError(
                f"model {model!r} and X-Model-Version {pinned} name different versions", param="model"
            )
        return parsed[1]

    def _route_quietly(self, request: Request, view: View, key: str | None, pinned: int | None) -> None:
        """For a request refused before its body was read: the version it would have reached, if any."""
        with contextlib.suppress(GatewayError):
            request.state.model_version = choose(view.split, key=key, draw=self._draw() * 100, pinned=pinned).version
