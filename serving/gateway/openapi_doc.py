"""The gateway's OpenAPI document (``GET /openapi.json``), saying what the gateway really answers.

FastAPI documents only what its router knows: a 422 with its own body for a bad request, no 401 on
the admin API, JSON for every answer, and nothing of ``POST /v1/chat/completions`` (a plain route,
kept off FastAPI's dependency solving for speed). The gateway answers otherwise: every error is
OpenAI's error JSON (``errors.install``) with the status ``errors._STATUS`` gives it. This module
rewrites FastAPI's document to match, so clients and schema fuzzers can rely on it.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from serving.gateway import openai_schema as wire

_REF = "#/components/schemas/{model}"
_ERROR_REF = {"$ref": "#/components/schemas/Error"}
_NULLABLE_STRING = {"anyOf": [{"type": "string"}, {"type": "null"}]}
#: OpenAI's error object, the body of every 4xx and 5xx the gateway (and the nginx edge) writes.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": _NULLABLE_STRING,
                "code": _NULLABLE_STRING,
            },
        }
    },
}
_USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {
        name: {"type": "integer", "minimum": 0} for name in ("prompt_tokens", "completion_tokens", "total_tokens")
    },
}
#: ``wire.completion``'s answer.
COMPLETION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices", "usage"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "system_fingerprint": {"type": "string"},
        "choices": {
            "type": "array",
            "minItems": 1,
            "maxItems": 1,
            "items": {
                "type": "object",
                "required": ["index", "message", "finish_reason"],
                "properties": {
                    "index": {"const": 0},
                    "message": {
                        "type": "object",
                        "required": ["role", "content"],
                        "properties": {"role": {"const": "assistant"}, "content": {"type": "string"}},
                    },
                    "finish_reason": {"enum": ["stop", "length"]},
                },
            },
        },
        "usage": _USAGE,
    },
}
#: One server-sent event of ``wire.chunks``: its ``data`` is a ``chat.completion.chunk`` JSON, or ``[DONE]``.
_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string", "minLength": 1}},
}
#: ``wire.model_list``'s answer.
#: One entry of ``GET /v1/models``, and the answer of ``GET /v1/models/{model}``.
MODEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
    },
}
MODELS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["object", "data"],
    "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": MODEL_SCHEMA}},
}
_ERRORS = {
    # The chat route: errors._STATUS for what it raises, and what nginx answers in front of it.
    "chat": (400, 404, 413, 429, 502, 503, 504),
    "admin": (400, 401, 404, 409, 503),
    "other": (),
}


def _error(status: int) -> dict[str, Any]:
    return {
        "description": f"HTTP {status} in OpenAI's error format",
        "content": {"application/json": {"schema": _ERROR_REF}},
    }


def _chat_operation(components: dict[str, Any]) -> dict[str, Any]:
    request = wire.ChatRequest.model_json_schema(ref_template=_REF)
    components.update(request.pop("$defs", {}))
    components["ChatRequest"] = request
    return {
        "summary": "Create a chat completion (OpenAI-compatible)",
        "operationId": "create_chat_completion",
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": _REF.format(model="ChatRequest")}}},
        },
        "responses": {
            "200": {
                "description": "The answer; a server-sent event stream when the request sets `stream`",
                "content": {
                    "application/json": {"schema": COMPLETION_SCHEMA},
                    # Before OpenAPI 3.2 an event stream's schema describes each event: a chunk, or [DONE].
                    "text/event-stream": {"schema": _EVENT_SCHEMA},
                },
            }
        },
    }


def document(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document, built once: FastAPI's, corrected as the module docstring says."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    components["Error"] = copy.deepcopy(ERROR_SCHEMA)
    doc["components"]["securitySchemes"] = {"admin_token": {"type": "http", "scheme": "bearer"}}
    paths = doc.setdefault("paths", {})
    paths["/v1/chat/completions"] = {"post": _chat_operation(components)}
    for path, item in paths.items():
        kind = "chat" if path == "/v1/chat/completions" else "admin" if path.startswith("/admin/") else "other"
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            # FastAPI's 422 never happens: a body that fails validation is a 400 in OpenAI's format.
            had_body = responses.pop("422", None) is not None or "requestBody" in operation
            for status in _ERRORS[kind] + ((400,) if had_body else ()):
                responses.setdefault(str(status), _error(status))
            if kind == "admin":
                operation["security"] = [{"admin_token": []}]
    paths["/v1/models"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] = MODELS_SCHEMA
    retrieve = paths["/v1/models/{model}"]["get"]["responses"]
    retrieve["200"]["content"]["application/json"]["schema"] = MODEL_SCHEMA
    retrieve["404"] = _error(404)  # a model this gateway does not serve: code model_not_found
    paths["/metrics"]["get"]["responses"]["200"]["content"] = {"text/plain": {"schema": {"type": "string"}}}
    paths["/readyz"]["get"]["responses"]["503"] = {
        "description": "Not ready: the detail says why (no champion known, or it is not READY in Triton)",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    app.openapi_schema = doc
    return doc
