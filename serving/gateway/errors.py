"""The gateway's domain errors, and the one place that maps them to HTTP answers.

Modules raise these exceptions, which say what went wrong and carry no status codes; ``install``
registers the handlers that turn each into OpenAI's error JSON
(``{"error": {"message", "type", "param", "code"}}``) with the status in ``_STATUS``. Anything
else becomes a 500 with a generic message and the request id, never a traceback (the app's
outer middleware).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from serving.gateway.lograte import RateLimitedLog

log = logging.getLogger(__name__)
_aggregated = RateLimitedLog(log)


class GatewayError(Exception):
    """Base: ``message`` for a person, ``param`` the request field at fault, ``code`` a stable keyword."""

    code = "gateway_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequestError(GatewayError):
    """The client must change the request (malformed JSON, a field out of range, not an image)."""

    code = "invalid_request"


class PayloadTooLargeError(GatewayError):
    """The body or an image is over a size limit."""

    code = "payload_too_large"


class ModelNotFoundError(GatewayError):
    """No such model, or the pinned version is not served."""

    code = "model_not_found"


class UnauthorizedError(GatewayError):
    """The admin API needs a valid bearer token."""

    code = "invalid_api_key"


class NoReadyVersionError(GatewayError):
    """No version can take the request now (no champion known, or it is not ready in Triton)."""

    code = "model_not_ready"


class UpstreamError(GatewayError):
    """Triton did not answer ``version``'s request. ``retryable``: a canary failure the champion may answer."""

    retryable = True

    def __init__(self, message: str, version: int | None = None, *, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.version = version


class UpstreamUnavailableError(UpstreamError):
    """No connection to Triton (refused, reset) or Triton reports itself unavailable."""

    code = "upstream_unavailable"


class UpstreamNotReadyError(UpstreamError):
    """Triton has the version unloaded, loading, or unknown."""

    code = "model_not_ready"


class UpstreamOverloadedError(UpstreamError):
    """Triton refused the request: its queue is full or the request waited past the queue timeout."""

    code = "overloaded"


class UpstreamTimeoutError(UpstreamError):
    """No answer within the gateway's upstream timeout."""

    code = "upstream_timeout"


class UpstreamFailedError(UpstreamError):
    """Triton answered with a server error (the model failed, or an injected fault)."""

    code = "upstream_error"


class UpstreamRejectedError(UpstreamError):
    """The model refused the request as invalid: the client's fault, not the version's."""

    code = "invalid_request"
    retryable = False


class ClientDisconnectedError(GatewayError):
    """The client went away before its answer was complete; its request was cancelled in Triton.

    Nobody reads the answer to it: it exists so a disconnect is counted as one (499, nginx's "client
    closed request"), never as a 500 or as an error of the version that was answering.
    """

    code = "client_closed_request"


class RegistryConflictError(GatewayError):
    """The registry refused the action: an invalid transition or a concurrent change."""

    code = "conflict"


class RegistryNotFoundError(GatewayError):
    """The registry has no such model, version or alias."""

    code = "not_found"


class RegistryUnavailableError(GatewayError):
    """MLflow did not answer."""

    code = "registry_unavailable"


# Status and OpenAI error type per exception class; the most specific class listed wins (MRO order).
_STATUS: dict[type[GatewayError], tuple[int, str]] = {
    InvalidRequestError: (400, "invalid_request_error"),
    UpstreamRejectedError: (400, "invalid_request_error"),
    UnauthorizedError: (401, "authentication_error"),
    ModelNotFoundError: (404, "invalid_request_error"),
    RegistryNotFoundError: (404, "invalid_request_error"),
    RegistryConflictError: (409, "invalid_request_error"),
    PayloadTooLargeError: (413, "invalid_request_error"),
    ClientDisconnectedError: (499, "invalid_request_error"),
    UpstreamFailedError: (502, "server_error"),
    NoReadyVersionError: (503, "server_error"),
    UpstreamUnavailableError: (503, "server_error"),
    UpstreamNotReadyError: (503, "server_error"),
    UpstreamOverloadedError: (503, "server_error"),
    RegistryUnavailableError: (503, "server_error"),
    UpstreamTimeoutError: (504, "server_error"),
}
#: Seconds a client should wait before retrying a 503 (overload, Triton or MLflow down).
RETRY_AFTER_S = 1


def status_of(exc: GatewayError) -> tuple[int, str]:
    for klass in type(exc).__mro__:
        if klass in _STATUS:
            return _STATUS[klass]
    return 500, "server_error"


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


#: What a client is told when Triton cannot be reached; the details (its address, the socket error)
#: stay in the gateway's log: they tell an outsider about the inside and do not help the client.
PUBLIC_UNAVAILABLE = "the model server is unavailable; retry shortly"
#: Where a server error's message names an address of the inside (a URL, an IP, host:port), the
#: client reads this instead; the whole message goes to the log.
INTERNAL = "<internal>"
_ADDRESS = re.compile(
    r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"),]+"  # a URL
    r"|\[[0-9A-Fa-f:.]+\](?::[0-9]+)?"  # [IPv6] or [IPv6]:port
    r"|\b[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?::[0-9]+)?\b"  # IPv4 or IPv4:port
    r"|\b[A-Za-z][A-Za-z0-9-]*(?:\.[A-Za-z0-9-]+)*:[0-9]{2,5}\b"  # host:port
)


def public_message(message: str) -> str:
    """``message`` without internal addresses (each becomes ``<internal>``)."""
    return _ADDRESS.sub(INTERNAL, message)


def error_response(exc: GatewayError, headers: dict[str, str] | None = None) -> Response:
    """The HTTP answer for ``exc``: OpenAI's error JSON, Retry-After on 503, a Bearer challenge on 401.

    A server error's message never shows an internal address: Triton's and MLflow's errors name
    them, and the client can do nothing with them (they are logged, aggregated, instead).
    """
    status, kind = status_of(exc)
    message = exc.message
    if isinstance(exc, UpstreamUnavailableError):
        _aggregated.warning(f"unavailable {exc.code}", "upstream unavailable: %s", exc.message)
        message = PUBLIC_UNAVAILABLE
    elif status >= 500 and (public := public_message(message)) != message:
        _aggregated.warning(f"{status} {exc.code}", "%s answered %d: %s", type(exc).__name__, status, exc.message)
        message = public
    extra = dict(headers or {})
    if status == 503:
        extra["Retry-After"] = str(RETRY_AFTER_S)
    if status == 401:
        extra["WWW-Authenticate"] = "Bearer"
    body = error_body(message, kind, exc.param, exc.code)
    return Response(body, status_code=status, media_type="application/json", headers=extra)


def validation_message(errors: list[dict[str, Any]], raw: object = None) -> InvalidRequestError:
    """Pydantic's errors as one 400 naming the field at fault, dotted as OpenAI names them.

    Pydantic's locations include labels of union branches and tags; walking ``raw`` (the request
    as sent) keeps only the keys and indexes the client actually wrote. The deepest error wins (the
    branch the client meant); errors at the same field are joined.
    """
    if not errors:
        return InvalidRequestError("invalid request")
    paths = [_client_path(tuple(e.get("loc", ())), raw, e.get("type") == "missing") for e in errors]
    deepest = max(len(path) for path in paths)
    chosen = [(path, e) for path, e in zip(paths, errors, strict=True) if len(path) == deepest]
    param = ".".join(chosen[0][0]) or None
    same = [str(e.get("msg")) for path, e in chosen if path == chosen[0][0]]
    reasons = "; or ".join(dict.fromkeys(same))
    return InvalidRequestError(f"{param}: {reasons}" if param else reasons, param=param)


def _client_path(loc: tuple[Any, ...], raw: object, missing: bool) -> list[str]:
    path, node = [], raw
    for index, part in enumerate(loc):
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(str(part))
            node = node[part]
        elif missing and index == len(loc) - 1 and part != "body":
            path.append(str(part))
    return path


def install(app: FastAPI) -> None:
    """Register the handlers: domain errors, FastAPI's validation errors and its routing errors (404, 405).

    The catch-all for anything else is ``app.EdgeMiddleware``: it also sees errors raised outside
    the router, and its 500 carries the request id.
    """

    async def on_gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return error_response(exc)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_message(list(exc.errors()), {"body": exc.body}))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        body = error_body(str(exc.detail), kind, None, None)
        return Response(body, status_code=exc.status_code, media_type="application/json", headers=exc.headers)

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
