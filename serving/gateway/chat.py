"""The hot path of ``POST /v1/chat/completions``: read, route, check, stream from Triton, retry, answer.

Order matters for the headers: the request is routed as soon as its session key is known, so even
a refused request says which version it would have reached (``X-Model-Version``; ``none`` when no
version could be chosen). Every answer is streamed from Triton, and a response starts only once
the first piece has arrived, so a canary failure before it (Triton 5xx, timeout, connection error,
not ready, an injected fault) is answered by the champion and counted against the canary. After the
first piece a streamed answer cannot change versions: a failure ends the stream with an error event
and counts against the version that failed. A non-streamed answer is collected first, so a canary
failure at any point is still answered by the champion. A champion failure and a pinned version's
failure are the client's answer.

A client that goes away (streaming or not) has its request cancelled in Triton (the upstream
connection is closed) and is counted as a client disconnect of that version, never as an error.
Each successful live attempt records its latency, time to first token (from sending the request
upstream to the first piece's arrival), time per output token after the first, and its tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from core.names import parse_served_name, served_model_name
from serving.gateway import openai_schema as wire
from serving.gateway.errors import (
    PUBLIC_UNAVAILABLE,
    ClientDisconnectedError,
    GatewayError,
    InvalidRequestError,
    ModelNotFoundError,
    PayloadTooLargeError,
    UpstreamError,
    UpstreamFailedError,
    UpstreamNotReadyError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
    public_message,
    validation_message,
)
from serving.gateway.faults import Faults
from serving.gateway.images import ImageInfo, RemoteImages, check_data_uri, check_limits
from serving.gateway.lograte import RateLimitedLog
from serving.gateway.metrics import Metrics
from serving.gateway.reconcile import Reconciler, VersionConfig, View
from serving.gateway.routing import Route, choose, parse_pin
from serving.gateway.shadow import Shadow
from serving.gateway.upstream import Delta, Inference, Sampling, Upstream, collect
from serving.telemetry import CANCEL_DISCONNECT, CANCEL_TIMEOUT, OUTCOME_ERROR, OUTCOME_OK, OUTCOME_REJECTED

log = logging.getLogger(__name__)
_aggregated = RateLimitedLog(log)  # a canary failing every request must not log a line per request

SESSION_HEADER = "x-session-id"
PIN_HEADER = "x-model-version"
#: Seeds the gateway draws for requests without one (each request samples from its own generator).
_SEED_BITS = 63
T = TypeVar("T")


class _EventStream(StreamingResponse):
    """A server-sent event stream that always closes its source, even when the client left mid-way."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Starlette cancels the stream when the client disconnects, but leaves the generator open.
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


class _Attempt:
    """One live attempt on one version from its first piece on: timed, and counted exactly once."""

    def __init__(
        self,
        service: ChatService,
        version: int,
        pinned: bool,
        pieces: AsyncGenerator[Delta, None],
        first: Delta,
        started: float,
        retry: bool = False,
    ) -> None:
        self.service = service
        self.version = version
        self.pinned = pinned
        # The champion answering for a failed canary attempt: outside the split, not judged.
        self.retry = retry
        self.first = first
        self.last = first
        self.started = started
        self.first_at = time.perf_counter()
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + service.timeout_s - (self.first_at - started)
        self._pieces = pieces
        self._counted = False

    async def rest(self) -> AsyncIterator[Delta]:
        """The pieces after the first (an ``UpstreamError`` if the stream fails or runs past the timeout)."""
        if self.first.finish_reason:
            return
        while True:
            try:
                async with asyncio.timeout_at(self.deadline):
                    delta = await anext(self._pieces)
            except StopAsyncIteration:
                raise UpstreamFailedError(
                    f"v{self.version}'s stream ended before its answer did", self.version
                ) from None
            except TimeoutError:
                self.service.metrics.cancelled(self.version, CANCEL_TIMEOUT)
                raise UpstreamTimeoutError(
                    f"v{self.version} did not finish within {self.service.timeout_s:g} s", self.version
                ) from None
            except UpstreamError as exc:
                exc.version = self.version
                raise
            self.last = delta
            yield delta
            if delta.finish_reason:
                return

    async def collect(self) -> Inference:
        """The whole answer (counted as a success), or the failure (counted against the version)."""
        parts, logprobs = [self.first.text], self.first.logprobs
        try:
            async for delta in self.rest():
                parts.append(delta.text)
                if delta.logprobs is not None:
                    logprobs = [*(logprobs or []), *delta.logprobs]
        except UpstreamError as exc:
            self.failed(exc)
            raise
        self.succeeded()
        return self.answer("".join(parts), logprobs)

    def answer(self, text: str, logprobs: list[dict[str, Any]] | None = None) -> Inference:
        last = self.last
        return Inference(
            text, last.prompt_tokens, last.completion_tokens, last.model_version, last.finish_reason, logprobs
        )

    def succeeded(self) -> None:
        if self._counted:
            return
        self._counted = True
        ended = time.perf_counter()
        tokens = self.last.completion_tokens
        tpot = (ended - self.first_at) / (tokens - 1) if tokens >= 2 else None
        self.service.metrics.attempt(
            self.version,
            OUTCOME_OK,
            ended - self.started,
            pinned=self.pinned,
            retry=self.retry,
            ttft_s=self.first_at - self.started,
            tpot_s=tpot,
            completion_tokens=tokens,
        )

    def failed(self, exc: UpstreamError) -> None:
        if self._counted:
            return
        self._counted = True
        outcome = OUTCOME_REJECTED if isinstance(exc, UpstreamRejectedError) else OUTCOME_ERROR
        self.service.metrics.attempt(self.version, outcome, pinned=self.pinned, retry=self.retry)

    def disconnected(self) -> None:
        """The client left: the request is cancelled in Triton; neither a success nor a failure."""
        if self._counted:
            return
        self._counted = True
        self.service.metrics.disconnect(self.version)
        self.service.metrics.cancelled(self.version, CANCEL_DISCONNECT)

    async def close(self) -> None:
        """Stop reading: an unfinished stream's request is cancelled in Triton."""
        await self._pieces.aclose()


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
        try:  # a request that can never succeed is a 400 whatever the upstream's state (a 503 invites a retry)
            wire.refuse_unsupported(raw)
            try:
                chat = wire.ChatRequest.model_validate(raw)
            except ValidationError as exc:
                raise validation_message(list(exc.errors()), raw) from exc  # type: ignore[arg-type]
        except GatewayError:
            self._route_quietly(request, view, key, pinned)
            raise
        if not view.ready and not view.triton.reachable:
            raise UpstreamUnavailableError(f"Triton is unreachable ({view.triton.error}); retry shortly")
        route = choose(view.split, key=key, draw=self._draw() * 100, pinned=pinned)
        request.state.model_version = route.version
        images, urls = await self._images(chat)
        messages = wire.wire_messages(chat, urls)
        sampling = chat.sampling()
        if sampling.seed is None:
            # Drawn here, not in Triton, so a retry on the champion samples as the first attempt would have.
            sampling = replace(sampling, seed=random.getrandbits(_SEED_BITS))
        request_id = str(request.state.request_id)
        created = int(time.time())
        if chat.stream:
            attempt = await self._unless_gone(request, self._open(request, route, view, messages, sampling, images))
            chunks = wire.Chunks(
                request_id,
                created,
                self.model,
                attempt.first.model_version,
                include_usage=chat.include_usage,
                logprobs=sampling.logprobs,
            )
            events = self._relay(attempt, chunks, view, route, messages, sampling)
            # X-Accel-Buffering: nginx passes each event on as it comes instead of buffering the answer.
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return _EventStream(events, media_type="text/event-stream", headers=headers)
        answer, version = await self._unless_gone(
            request, self._answer(request, route, view, messages, sampling, images)
        )
        if version == view.split.champion and route.reason != "pinned":
            self.shadow.maybe_mirror(view, messages, sampling, answer)
        body = wire.completion(request_id, created, self.model, answer, logprobs=sampling.logprobs)
        return Response(body, media_type="application/json")

    async def call(
        self, version: int, messages: bytes, sampling: Sampling, timeout_s: float | None = None
    ) -> Inference:
        """One whole attempt on ``version`` (injected faults first), bounded by the upstream timeout; no metrics."""
        limit = self.timeout_s if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(limit), contextlib.aclosing(self._pieces(version, messages, sampling)) as pieces:
                return await collect(pieces)
        except TimeoutError as exc:
            raise UpstreamTimeoutError(f"v{version} did not answer within {limit:g} s", version) from exc
        except UpstreamError as exc:
            exc.version = version
            raise

    async def _pieces(self, version: int, messages: bytes, sampling: Sampling) -> AsyncGenerator[Delta, None]:
        """``version``'s stream: injected faults first, then Triton's pieces; closing it cancels the request."""
        name = self._names.get(version)
        if name is None:
            name = self._names[version] = served_model_name(self.model, version)
        await self.faults.apply(version)
        async with contextlib.aclosing(self.upstream.stream(name, messages, sampling)) as pieces:
            async for delta in pieces:
                yield delta

    async def _first(
        self, version: int, messages: bytes, sampling: Sampling, *, pinned: bool = False, retry: bool = False
    ) -> _Attempt:
        """Start an attempt on ``version`` and wait for its first piece; a failure before it is counted here."""
        started = time.perf_counter()
        pieces = self._pieces(version, messages, sampling)
        try:
            async with asyncio.timeout(self.timeout_s):
                first = await anext(pieces)
        except StopAsyncIteration:
            exc: UpstreamError = UpstreamFailedError(f"v{version} sent no answer at all", version)
        except TimeoutError:
            self.metrics.cancelled(version, CANCEL_TIMEOUT)
            exc = UpstreamTimeoutError(f"v{version} did not answer within {self.timeout_s:g} s", version)
        except UpstreamError as error:
            error.version = version
            exc = error
        except asyncio.CancelledError:
            # The client left (or the server stops) while this version was still thinking.
            await pieces.aclose()
            self.metrics.disconnect(version)
            self.metrics.cancelled(version, CANCEL_DISCONNECT)
            raise
        else:
            return _Attempt(self, version, pinned, pieces, first, started, retry)
        await pieces.aclose()
        if isinstance(exc, UpstreamRejectedError):
            self.metrics.attempt(version, OUTCOME_REJECTED, pinned=pinned, retry=retry)
        else:
            self.metrics.attempt(version, OUTCOME_ERROR, pinned=pinned, retry=retry)
            if isinstance(exc, UpstreamNotReadyError):
                self.reconciler.mark_not_ready(version)
        raise exc

    async def _open(
        self,
        request: Request,
        route: Route,
        view: View,
        messages: bytes,
        sampling: Sampling,
        images: list[tuple[str, ImageInfo]],
    ) -> _Attempt:
        """The routed version's first piece, or the champion's when a canary fails before it."""
        pinned = route.reason == "pinned"
        try:
            return await self._first(
                route.version, messages, self._prepare(view, route.version, sampling, images), pinned=pinned
            )
        except UpstreamError as exc:
            if not exc.retryable or route.fallback is None:
                raise
            self._retrying(route.version, route.fallback, exc)
        request.state.model_version = route.fallback
        return await self._first(
            route.fallback, messages, self._prepare(view, route.fallback, sampling, images), retry=True
        )

    async def _answer(
        self,
        request: Request,
        route: Route,
        view: View,
        messages: bytes,
        sampling: Sampling,
        images: list[tuple[str, ImageInfo]],
    ) -> tuple[Inference, int]:
        """A whole answer; a canary failure, before or after its first piece, is answered by the champion."""
        attempt = await self._open(request, route, view, messages, sampling, images)
        try:
            return await self._finish(attempt)
        except UpstreamError as exc:
            if not exc.retryable or route.fallback is None or attempt.version == route.fallback:
                raise
            self._retrying(attempt.version, route.fallback, exc)
        request.state.model_version = route.fallback
        fallback = await self._first(
            route.fallback, messages, self._prepare(view, route.fallback, sampling, images), retry=True
        )
        return await self._finish(fallback)

    @staticmethod
    async def _finish(attempt: _Attempt) -> tuple[Inference, int]:
        try:
            return await attempt.collect(), attempt.version
        except asyncio.CancelledError:
            attempt.disconnected()
            raise
        finally:
            await attempt.close()

    async def _relay(
        self, attempt: _Attempt, chunks: wire.Chunks, view: View, route: Route, messages: bytes, sampling: Sampling
    ) -> AsyncIterator[bytes]:
        """The event stream of an attempt whose first piece has arrived (the response's body)."""
        parts = [attempt.first.text]
        try:
            yield chunks.role()
            yield chunks.piece(attempt.first)
            try:
                async for delta in attempt.rest():
                    parts.append(delta.text)
                    yield chunks.piece(delta)
            except UpstreamError as exc:
                attempt.failed(exc)
                log.warning("v%d failed after its answer had begun streaming: %s", attempt.version, exc.message)
                # As error_response does for an answer that had not begun: no internal address reaches a client.
                unavailable = isinstance(exc, UpstreamUnavailableError)
                public = PUBLIC_UNAVAILABLE if unavailable else public_message(exc.message)
                yield wire.error_event(exc, public)
                return
            attempt.succeeded()
            yield chunks.end(attempt.last.prompt_tokens, attempt.last.completion_tokens)
        except (asyncio.CancelledError, GeneratorExit):
            attempt.disconnected()
            raise
        finally:
            await attempt.close()
        if attempt.version == view.split.champion and route.reason != "pinned":
            self.shadow.maybe_mirror(view, messages, sampling, attempt.answer("".join(parts)))

    def _retrying(self, version: int, fallback: int, exc: UpstreamError) -> None:
        _aggregated.warning(
            f"canary v{version} {exc.code}",
            "canary v%d failed (%s); answering with champion v%d",
            version,
            exc.message,
            fallback,
        )
        self.metrics.retry()

    def _prepare(self, view: View, version: int, sampling: Sampling, images: list[tuple[str, ImageInfo]]) -> Sampling:
        """Apply ``version``'s limits; what to send it: the cap lowered to its maximum, its defaults filled in."""
        config = view.ready.get(version, VersionConfig())
        check_limits(images, config.max_images, config.max_image_pixels)
        return config.fill(sampling)

    async def _unless_gone(self, request: Request, work: Awaitable[T]) -> T:
        """``work``'s result, unless the client disconnects first: then ``work`` is cancelled (and with it
        the request in Triton) and ``ClientDisconnectedError`` raised (a 499 nobody reads)."""
        task = asyncio.ensure_future(work)
        gone = asyncio.ensure_future(_disconnected(request.receive))
        try:
            await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if task.cancelled():
            raise ClientDisconnectedError("the client closed the connection before its answer was ready")
        return task.result()

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
        """For a request refused before it was routed: the version it would have reached, if any."""
        with contextlib.suppress(GatewayError):
            request.state.model_version = choose(view.split, key=key, draw=self._draw() * 100, pinned=pinned).version


async def _disconnected(receive: Receive) -> None:
    """Return when the client has gone (its body was read already, so the next message says so)."""
    while (await receive())["type"] != "http.disconnect":
        pass
