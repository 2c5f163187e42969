"""The gateway's Triton client: answers stream from Triton's ``generate_stream`` over ``http1.Pool``.

Answers go over the gateway's own keep-alive HTTP/1.1 client (``serving/gateway/http1.py``, httptools'
parser); the control calls (readiness, model configs) over one aiohttp session.

The served model is decoupled (one response per token group), so Triton's KServe ``/infer``
endpoint refuses it. Streaming clients, measured with the former ``serving/gateway/bench.py`` (in git
history; ``make bench-gateway`` now times the gateway hop with this client): a real
Triton 2.51 serving a zero-work decoupled stand-in with the real tensor contract that streams 8
responses per request; each client in one uvloop loop; per candidate and round 300 sequential
requests (p50 of the whole stream, and of its first response: time to first token) and 2 s at
concurrency 8; three alternated rounds, medians; 2 cores shared with other work (load average
7-9 during this run, so read the times loosely). The steadiest figure is the client's own CPU
time per request, what a gateway worker's event loop spends per upstream call. Payload: the
task's 64x64 PNG and a question (393 bytes).

| candidate | p50 ms | TTFT p50 ms | req/s at c8 | client CPU per request |
|---|---|---|---|---|
| aiohttp, HTTP ``generate_stream`` (this module) | 1.47 | 0.62 | 641 | 409 us |
| ``tritonclient.grpc.aio`` ``stream_infer`` | 2.49 | 0.96 | 383 | 1,353 us |
| ``grpc.aio`` ``ModelStreamInfer``, protobuf built by hand | 2.49 | 0.91 | 398 | 1,162 us |

An earlier run of the same comparison (load average 1-2) kept the order: 436, 1,501 and 1,149 us.
With a photo-sized payload (an incompressible 512x512 PNG, 1.05 MB; 100 requests per round): p50
5.6 ms over ``generate_stream`` (Triton parses the megabyte as a JSON string) against 4.6 and 4.3 ms
over gRPC (raw bytes), but the client's CPU per request is 0.88 ms against 1.64 and 1.41 ms. The
gateway's event loop is the scarce resource (it shares 2 cores with Triton), so: HTTP
``generate_stream``. It also cancels cleanly: closing the connection makes Triton cancel the request
(its Python model sees ``request.is_cancelled()``; a test checks it).

Then aiohttp against a client of the gateway's own on that endpoint (2026-12-07, the stand-in above;
requests taken in turn by one client, 20 s, twice): a minimal uvicorn app proxying to Triton adds
0.57-0.62 ms at p50 with aiohttp and 0.30-0.33 ms with ``http1``, and the whole gateway went from
1.09 to 0.80-0.85 ms. With the embedded model (``python -m bench --parts overhead``, the same day)
the gateway's p50 over direct Triton went from 1.07 ms (95%: 0.98 to 1.18) to 0.97 ms (0.86 to 1.06)
and its CPU per answered request from 1.35 to 1.17 ms (docs/performance.md).

The whole gateway (uvicorn, uvloop, httptools, one worker, its own process) in front of the
stand-in, phase 2 of the bench, same run: it adds 0.58 ms to the p50 of a collected answer (2.47
against 1.89 ms straight to Triton) and 0.80 ms to the time to first token of a streamed one
(1.56 against 0.76 ms).

The request is the generate extension's JSON object: each input by name at the top level (the
``messages`` document as a string, the JSON-valued inputs as strings). Every input is sent on
every request, with the version's own defaults filled in, because Triton's dynamic batcher only
batches requests that carry the same inputs. Responses are server-sent events, one JSON object of
outputs each (Triton writes the version it ran as ``model_version``, over the output of that name).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import orjson

from core.contract import (
    INPUT_FREQUENCY_PENALTY,
    INPUT_LOGIT_BIAS,
    INPUT_LOGPROBS,
    INPUT_MAX_TOKENS,
    INPUT_MESSAGES,
    INPUT_PRESENCE_PENALTY,
    INPUT_RESPONSE_FORMAT,
    INPUT_SEED,
    INPUT_STOP,
    INPUT_TEMPERATURE,
    INPUT_TOP_LOGPROBS,
    INPUT_TOP_P,
    INTERNAL_ERROR,
    OUTPUT_COMPLETION_TOKENS,
    OUTPUT_FINISH_REASON,
    OUTPUT_MODEL_VERSION,
    OUTPUT_PROMPT_TOKENS,
    OUTPUT_TEXT,
    OUTPUT_TOKEN_LOGPROBS,
)
from serving.gateway.errors import (
    UpstreamError,
    UpstreamFailedError,
    UpstreamNotReadyError,
    UpstreamOverloadedError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from serving.gateway.http1 import Connection, ConnectionLostError, Pool

log = logging.getLogger(__name__)

# Triton's words for a model it cannot run now, and for a refusal under load (queue full or timed out).
_NOT_READY = ("not at ready state", "unknown model", "no available versions", "is not found")
# Polls and config reads must not hang behind a busy model for the whole inference timeout.
_CONTROL_TIMEOUT = aiohttp.ClientTimeout(total=5.0)
_OVERLOAD = ("exceeds maximum queue size", "request timeout expired")


@dataclass(frozen=True, slots=True)
class Sampling:
    """What one attempt asks of the model besides the conversation: the contract's optional inputs.

    None for ``max_tokens``, ``temperature``, ``top_p`` or ``seed`` leaves the input out (the model's
    default applies); the gateway fills them in so every request carries the same inputs.
    """

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Mapping[str, float] = field(default_factory=dict)
    logprobs: bool = False
    top_logprobs: int = 0
    response_format: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Delta:
    """One streamed response: the text it adds, the counts so far, and on the last one why it ended."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    model_version: str
    finish_reason: str = ""
    logprobs: list[dict[str, Any]] | None = None


@dataclass(frozen=True, slots=True)
class Inference:
    """One whole answer of one version (a collected stream)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    model_version: str
    finish_reason: str = "stop"
    logprobs: list[dict[str, Any]] | None = None


async def collect(stream: AsyncIterator[Delta]) -> Inference:
    """Read a stream to its end: the whole answer (``UpstreamFailedError`` if it ends without a finish)."""
    parts: list[str] = []
    logprobs: list[dict[str, Any]] | None = None
    last: Delta | None = None
    async for delta in stream:
        parts.append(delta.text)
        if delta.logprobs is not None:
            logprobs = [*(logprobs or []), *delta.logprobs]
        last = delta
    if last is None or not last.finish_reason:
        raise UpstreamFailedError("Triton's stream ended before the answer did")
    return Inference(
        "".join(parts), last.prompt_tokens, last.completion_tokens, last.model_version, last.finish_reason, logprobs
    )


class Upstream(Protocol):
    """What the gateway needs from Triton; ``TritonUpstream`` is the real one, tests bring fakes.

    ``stream`` is an async generator: stopping early (``aclose()``, or a cancelled task awaiting it)
    cancels the request in Triton.
    """

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    def stream(self, model: str, messages: bytes, sampling: Sampling) -> AsyncGenerator[Delta, None]: ...
    async def ready_models(self) -> set[str]: ...
    async def model_parameters(self, model: str) -> dict[str, str]: ...


class TritonUpstream:
    """Triton's HTTP endpoint (``generate_stream`` for answers, the repository API for readiness).

    Answers go over ``http1.Pool``, the hot path's own client; the control calls over aiohttp.
    """

    def __init__(self, url: str, timeout_s: float, *, connections: int = 64) -> None:
        self.url = url.rstrip("/") if "://" in url else f"http://{url.rstrip('/')}"
        self.timeout_s = timeout_s
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._pool: Pool | None = None

    async def start(self) -> None:
        self._pool = Pool(self.url, limit=self._connections, connect_timeout_s=self.timeout_s)
        connector = aiohttp.TCPConnector(limit=self._connections, keepalive_timeout=30.0)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            # Uncompressed answers: Triton would gzip them for aiohttp's default Accept-Encoding, costing
            # CPU at both ends of a loopback hop.
            skip_auto_headers=("Accept-Encoding",),
            auto_decompress=False,
            # An HTTP_PROXY from the environment must never carry traffic to a loopback Triton.
            trust_env=False,
        )

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def stream(self, model: str, messages: bytes, sampling: Sampling) -> AsyncGenerator[Delta, None]:
        """Ask ``model`` (a Triton model name) to answer the ``messages`` JSON document, piece by piece."""
        pool = self._require_pool()
        connection = await self._open(pool, f"/v2/models/{model}/generate_stream", generate_request(messages, sampling))
        finished = False  # read to its end: the connection can carry the next request
        try:
            if connection.status != 200:
                answer = await connection.read_all()
                finished = True  # an overloaded Triton's refusals must not cost a new connection each
                raise _classify(connection.status, answer)
            pending = b""
            while True:
                data = await connection.read()
                if data is None:  # the end: a last line the stream did not end with a newline is still one
                    lines, pending = [pending], b""
                else:
                    *lines, pending = (pending + data if pending else data).split(b"\n")
                for line in lines:
                    if not line.startswith(b"data:"):
                        continue
                    try:
                        event = orjson.loads(line[5:])
                    except orjson.JSONDecodeError as exc:
                        raise UpstreamFailedError(f"Triton sent an event that is not JSON: {line[:200]!r}") from exc
                    if "error" in event:
                        # The status (200) went out with the first event: a later failure travels in the stream.
                        raise _classify(500, orjson.dumps({"error": event["error"]}))
                    delta = _delta(event, model)
                    finished = bool(delta.finish_reason)
                    yield delta
                    if finished:
                        return
                if data is None:
                    return
        except ConnectionLostError as exc:
            raise UpstreamUnavailableError(f"Triton at {self.url} broke off the answer: {exc}") from exc
        finally:
            # Closing the connection is how Triton learns the client is gone: it cancels the request.
            pool.release(connection, reuse=finished)

    async def _open(self, pool: Pool, path: str, body: bytes) -> Connection:
        try:
            return await pool.post(path, body)
        except ConnectionLostError as exc:
            raise UpstreamUnavailableError(f"Triton at {self.url} closed the connection: {exc}") from exc
        except TimeoutError as exc:
            raise UpstreamTimeoutError(f"Triton at {self.url} did not answer within {self.timeout_s:g} s") from exc
        except OSError as exc:  # refused, unreachable, a name that does not resolve
            raise UpstreamUnavailableError(f"Triton at {self.url} is unreachable: {exc!r}") from exc

    async def ready_models(self) -> set[str]:
        """Names of the models Triton reports READY (raises ``UpstreamUnavailableError`` when it is down)."""
        status, payload = await self._post("/v2/repository/index", b'{"ready":true}', {}, _CONTROL_TIMEOUT)
        if status != 200:
            raise _classify(status, payload)
        return {entry["name"] for entry in orjson.loads(payload) if entry.get("state") == "READY"}

    async def model_parameters(self, model: str) -> dict[str, str]:
        """The ``parameters`` of ``model``'s config (its limits and generation defaults)."""
        session = self._require_session()
        try:
            async with session.get(f"{self.url}/v2/models/{model}/config", timeout=_CONTROL_TIMEOUT) as response:
                status, payload = response.status, await response.read()
        except TimeoutError as exc:
            raise UpstreamTimeoutError(f"Triton at {self.url} did not send {model}'s config in time") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailableError(f"Triton at {self.url} is unreachable: {exc!r}") from exc
        if status != 200:
            raise _classify(status, payload)
        parameters: dict[str, Any] = orjson.loads(payload).get("parameters") or {}
        return {key: str(value.get("string_value", "")) for key, value in parameters.items()}

    async def _post(
        self, path: str, body: bytes, headers: dict[str, str], timeout: aiohttp.ClientTimeout | None = None
    ) -> tuple[int, bytes]:
        session = self._require_session()
        for attempt in (1, 2):
            try:
                # aiohttp reads timeout=None as "no timeout": pass the session's unless told otherwise.
                limit = timeout if timeout is not None else session.timeout
                async with session.post(self.url + path, data=body, headers=headers, timeout=limit) as response:
                    return response.status, await response.read()
            except aiohttp.ServerDisconnectedError as exc:
                # A keep-alive connection the server closed while idle: the request never ran, send it again.
                if attempt == 2:
                    raise UpstreamUnavailableError(f"Triton at {self.url} closed the connection: {exc!r}") from exc
            except TimeoutError as exc:
                seconds = limit.total if limit.total is not None else self.timeout_s
                raise UpstreamTimeoutError(f"Triton at {self.url} did not answer within {seconds:g} s") from exc
            except aiohttp.ClientError as exc:
                raise UpstreamUnavailableError(f"Triton at {self.url} is unreachable: {exc!r}") from exc
        raise AssertionError("unreachable")

    def _require_pool(self) -> Pool:
        if self._pool is None:
            raise RuntimeError("TritonUpstream.start() was not awaited")
        return self._pool

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("TritonUpstream.start() was not awaited")
        return self._session


def generate_request(messages: bytes, sampling: Sampling) -> bytes:
    """The ``generate_stream`` body: every input of the contract, by name."""
    body: dict[str, Any] = {
        INPUT_MESSAGES: messages.decode("utf-8"),
        INPUT_STOP: orjson.dumps(list(sampling.stop)).decode(),
        INPUT_PRESENCE_PENALTY: sampling.presence_penalty,
        INPUT_FREQUENCY_PENALTY: sampling.frequency_penalty,
        INPUT_LOGIT_BIAS: orjson.dumps(dict(sampling.logit_bias)).decode(),
        INPUT_LOGPROBS: sampling.logprobs,
        INPUT_TOP_LOGPROBS: sampling.top_logprobs,
        INPUT_RESPONSE_FORMAT: orjson.dumps(sampling.response_format or {"type": "text"}).decode(),
    }
    for name, value in (
        (INPUT_MAX_TOKENS, sampling.max_tokens),
        (INPUT_TEMPERATURE, sampling.temperature),
        (INPUT_TOP_P, sampling.top_p),
        (INPUT_SEED, sampling.seed),
    ):
        if value is not None:
            body[name] = value
    return orjson.dumps(body)


def _delta(event: dict[str, Any], model: str) -> Delta:
    try:
        logprobs = event.get(OUTPUT_TOKEN_LOGPROBS) or None
        return Delta(
            text=str(event[OUTPUT_TEXT]),
            prompt_tokens=int(event[OUTPUT_PROMPT_TOKENS]),
            completion_tokens=int(event[OUTPUT_COMPLETION_TOKENS]),
            model_version=str(event[OUTPUT_MODEL_VERSION]),
            finish_reason=str(event.get(OUTPUT_FINISH_REASON) or ""),
            logprobs=orjson.loads(logprobs) if logprobs else None,
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UpstreamFailedError(f"Triton's answer from {model} lacks the contract's outputs: {exc!r}") from exc


def _classify(status: int, payload: bytes) -> UpstreamError:
    # An error before the first event comes as JSON, or as a one-event stream (`data: {"error": ...}`).
    text = payload.strip().removeprefix(b"data:").strip()
    try:
        message = str(orjson.loads(text).get("error", ""))
    except (orjson.JSONDecodeError, AttributeError):
        message = payload[:300].decode("utf-8", "replace")
    lowered = message.lower()
    if any(words in lowered for words in _NOT_READY) or status == 404:
        return UpstreamNotReadyError(message)
    if any(words in lowered for words in _OVERLOAD) or status in (429, 503):
        return UpstreamOverloadedError(message)
    # Triton answers a decoupled model's error response 400 whatever its code; model.py marks its own
    # failures (out of memory, a broken batch) with INTERNAL_ERROR: those are the version's, not the client's.
    if status == 400 and not message.startswith(INTERNAL_ERROR):
        return UpstreamRejectedError(message)
    return UpstreamFailedError(f"Triton answered {status}: {message}")
