"""OpenAI's chat-completions wire format: the request the gateway accepts and the answers it writes.

Every request parameter of OpenAI's chat completions reference is either honoured or refused with a
400 that names it (``param``) and says what is supported; never a 200 that ignores it.

Honoured: ``model`` (the registered model, or ``<model>-v<N>`` to pin a served version),
``messages`` (system, developer (read as system), user and assistant messages; content a string or
text and ``image_url`` parts), ``max_completion_tokens`` and ``max_tokens`` (a cap: the served
version's ``MAX_NEW_TOKENS`` caps it further), ``temperature``, ``top_p``, ``seed``, ``stop``,
``presence_penalty``, ``frequency_penalty``, ``logit_bias``, ``logprobs``, ``top_logprobs``,
``response_format`` (``text``, ``json_object``, ``json_schema``: constrained decoding), ``user``
(the session key), ``stream``, ``stream_options.include_usage``, and these at their only value:
``n`` 1, ``store`` false, ``modalities`` ``["text"]``, ``service_tier`` ``auto``/``default``,
``tool_choice`` ``none``, ``tools`` empty. Refused: everything in ``UNSUPPORTED`` (tools, audio,
reasoning and the like) and any field OpenAI does not define.

Streaming: the role chunk, one chunk per piece of text as Triton produces it (the last one carries
``finish_reason``), the usage chunk (``"choices": []``) when ``stream_options.include_usage`` asks,
then ``data: [DONE]``. A failure after the first chunk ends the stream with an error event in
OpenAI's error format (the official client raises ``APIError`` on it).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from core.names import served_model_name
from serving.gateway.errors import GatewayError, InvalidRequestError, ModelNotFoundError, status_of
from serving.gateway.upstream import Delta, Inference, Sampling

#: OpenAI request fields this gateway does not implement, with why; refused by name unless at a no-op value.
UNSUPPORTED: dict[str, str] = {
    "tools": "tool calling is not supported by this model",
    "tool_choice": "tool calling is not supported by this model (only 'none')",
    "parallel_tool_calls": "tool calling is not supported by this model",
    "functions": "function calling is not supported by this model",
    "function_call": "function calling is not supported by this model",
    "audio": "audio output is not supported; this model answers in text",
    "modalities": "only the text modality is supported (['text'])",
    "prediction": "predicted outputs are not supported",
    "reasoning_effort": "this model does not reason in separate steps",
    "verbosity": "answer verbosity is not adjustable for this model",
    "web_search_options": "web search is not supported",
    "metadata": "nothing is stored, so there is nothing to attach metadata to",
    "store": "completions are not stored (only false)",
    "service_tier": "there is one service tier (only 'auto' or 'default')",
    "prompt_cache_key": "prompt caching is not supported; use 'user' or X-Session-Id for sticky sessions",
    "safety_identifier": "safety identifiers are not supported; use 'user' for the session",
}
#: Values of the fields above that ask for nothing this gateway lacks (so honouring them is a no-op).
_NO_OP: dict[str, tuple[Any, ...]] = {
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "parallel_tool_calls": (None,),
    "functions": (None, []),
    "function_call": (None, "none"),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "verbosity": (None,),
    "web_search_options": (None,),
    "metadata": (None, {}),
    "store": (None, False),
    "service_tier": (None, "auto", "default"),
    "prompt_cache_key": (None,),
    "safety_identifier": (None,),
}
_SUPPORTED = (
    "model, messages, max_completion_tokens, max_tokens, temperature, top_p, seed, stop, presence_penalty, "
    "frequency_penalty, logit_bias, logprobs, top_logprobs, response_format, n (1), user, stream, stream_options"
)
#: Seeds travel as Triton INT64.
_INT64 = 2**63


def refuse_unsupported(raw: Mapping[str, Any]) -> None:
    """A 400 naming the first OpenAI field this gateway does not implement (at a value that asks for it)."""
    for name, why in UNSUPPORTED.items():
        if name in raw and raw[name] not in _NO_OP[name]:
            raise InvalidRequestError(f"'{name}' is not supported: {why}. Supported: {_SUPPORTED}", param=name)


class _Strict(BaseModel):
    # Strict about fields it does not know, as OpenAI is ("Unrecognized request argument"), and about the
    # types of those it does (`"temperature": false` or `"max_tokens": "5"` is a 400, not 0 or 5).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    url: str = Field(min_length=1)
    # Images are used at the resolution they are sent; a request for another one cannot be honoured.
    detail: Literal["auto"] | None = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | Annotated[list[Part], Field(min_length=1)]
    # Assistant turns as OpenAI returns them (``message.model_dump()`` replays every field, at null when
    # unused): a refusal text, tool calls or audio cannot be replayed to this model, their nulls can.
    refusal: None = None
    tool_calls: Annotated[list[Any], Field(max_length=0)] | None = None
    function_call: None = None
    audio: None = None
    annotations: Annotated[list[Any], Field(max_length=0)] | None = None

    @model_validator(mode="after")
    def _assistant_fields(self) -> Message:
        if self.role != "assistant" and (self.tool_calls is not None or self.annotations is not None):
            raise ValueError(f"tool_calls and annotations belong to assistant messages, not to {self.role} ones")
        return self


class StreamOptions(_Strict):
    include_usage: bool = False
    include_obfuscation: Literal[False] | None = None


class JsonSchema(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    # A JSON Schema; the model is constrained to it (the default: any JSON object).
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("'json_schema' is required with type 'json_schema' and allowed only with it")
        return self

    def wire(self) -> dict[str, Any]:
        """The ``response_format`` input of the model (its schema under ``schema``)."""
        if self.json_schema is None:
            return {"type": self.type}
        schema = self.json_schema.json_schema if self.json_schema.json_schema is not None else {"type": "object"}
        return {"type": self.type, "json_schema": {"name": self.json_schema.name, "schema": schema}}


class ChatRequest(_Strict):
    """One ``POST /v1/chat/completions`` body."""

    model: str = Field(min_length=1, max_length=200)
    messages: list[Message] = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(None, ge=1, le=1_000_000)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=-_INT64, lt=_INT64)
    stop: str | Annotated[list[Annotated[str, Field(min_length=1, max_length=256)]], Field(max_length=4)] | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(None, max_length=300)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    user: str | None = Field(None, max_length=256)
    # null is "not set" for every optional field, as OpenAI's own client types them.
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(1, ge=1, le=1, description="only 1: one choice per request")
    # The no-op values of UNSUPPORTED (anything else was refused before validation).
    parallel_tool_calls: None = None
    audio: None = None
    prediction: None = None
    reasoning_effort: None = None
    verbosity: None = None
    web_search_options: None = None
    prompt_cache_key: None = None
    safety_identifier: None = None
    store: Literal[False] | None = None
    modalities: list[Literal["text"]] | None = None
    service_tier: Literal["auto", "default"] | None = None
    tool_choice: Literal["none"] | None = None
    tools: Annotated[list[Any], Field(max_length=0)] | None = None
    functions: Annotated[list[Any], Field(max_length=0)] | None = None
    function_call: Literal["none"] | None = None
    metadata: Annotated[dict[str, str], Field(max_length=0)] | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, str) and not 1 <= len(value) <= 256:
            raise ValueError("a stop sequence must be 1 to 256 characters")
        return value

    @field_validator("stream_options")
    @classmethod
    def _only_streamed(cls, value: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if value is not None and not info.data.get("stream"):
            raise ValueError("stream_options is only allowed when stream is enabled")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not (key.isascii() and key.isdigit()):
                raise ValueError(f"keys must be token ids (whole numbers as strings), got {key[:20]!r}")
        return value

    # Field validators, so the error's param names the field (an object-level check has none).
    @field_validator("messages")
    @classmethod
    def _conversation(cls, messages: list[Message]) -> list[Message]:
        if messages[-1].role != "user":
            raise ValueError("the last message must come from the user")
        if any(message.role in ("system", "developer") for message in messages[1:]):
            raise ValueError("a system (or developer) message may only come first")
        return messages

    @field_validator("top_logprobs")
    @classmethod
    def _with_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return value

    @property
    def token_cap(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def sampling(self) -> Sampling:
        """What the request asks of the model (the version's defaults and cap are filled in per attempt)."""
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return Sampling(
            max_tokens=self.token_cap,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            stop=stop,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            logit_bias=dict(self.logit_bias or {}),
            logprobs=bool(self.logprobs),
            top_logprobs=self.top_logprobs or 0,
            response_format=self.response_format.wire() if self.response_format is not None else None,
        )

    def image_parts(self) -> Iterator[tuple[str, ImagePart]]:
        """Each image part with its field path (``messages.0.content.1.image_url.url``)."""
        for index, message in enumerate(self.messages):
            if isinstance(message.content, list):
                for number, part in enumerate(message.content):
                    if isinstance(part, ImagePart):
                        yield f"messages.{index}.content.{number}.image_url.url", part


def wire_messages(request: ChatRequest, urls: dict[str, str]) -> bytes:
    """The ``messages`` tensor: role and content only, image URLs replaced by ``urls`` (by field path)."""
    out: list[dict[str, Any]] = []
    for index, message in enumerate(request.messages):
        content: Any = message.content
        if isinstance(content, list):
            parts: list[dict[str, Any]] = []
            for number, part in enumerate(content):
                if isinstance(part, TextPart):
                    parts.append({"type": "text", "text": part.text})
                else:
                    url = urls.get(f"messages.{index}.content.{number}.image_url.url", part.image_url.url)
                    parts.append({"type": "image_url", "image_url": {"url": url}})
            content = parts
        # OpenAI's developer messages are the system messages of models without a separate role.
        out.append({"role": "system" if message.role == "developer" else message.role, "content": content})
    return orjson.dumps(out)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {"content": entries or [], "refusal": None}


def completion(request_id: str, created: int, model: str, answer: Inference, *, logprobs: bool = False) -> bytes:
    """A ``chat.completion`` object."""
    return orjson.dumps(
        {
            "id": f"chatcmpl-{request_id}",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": f"v{answer.model_version}",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.text, "refusal": None},
                    "logprobs": _logprobs(answer.logprobs) if logprobs else None,
                    "finish_reason": answer.finish_reason,
                }
            ],
            "usage": _usage(answer.prompt_tokens, answer.completion_tokens),
        }
    )


DONE = b"data: [DONE]\n\n"


class Chunks:
    """The server-sent events of one streamed answer, written as its pieces arrive."""

    def __init__(
        self, request_id: str, created: int, model: str, version: str, *, include_usage: bool, logprobs: bool
    ) -> None:
        self._base = {
            "id": f"chatcmpl-{request_id}",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": f"v{version}",
        }
        self._include_usage = include_usage
        self._logprobs = logprobs

    def _event(self, delta: dict[str, Any], reason: str | None, logprobs: list[dict[str, Any]] | None = None) -> bytes:
        choice = {
            "index": 0,
            "delta": delta,
            "logprobs": _logprobs(logprobs) if self._logprobs and logprobs is not None else None,
            "finish_reason": reason,
        }
        body = {**self._base, "choices": [choice], **({"usage": None} if self._include_usage else {})}
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def role(self) -> bytes:
        return self._event({"role": "assistant", "content": ""}, None)

    def piece(self, delta: Delta) -> bytes:
        """A piece of the answer (the last one with its ``finish_reason``)."""
        content = {"content": delta.text} if delta.text else {}
        return self._event(content, delta.finish_reason or None, delta.logprobs)

    def end(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The usage chunk, if asked for, then ``[DONE]``."""
        if not self._include_usage:
            return DONE
        usage = {**self._base, "choices": [], "usage": _usage(prompt_tokens, completion_tokens)}
        return b"data: " + orjson.dumps(usage) + b"\n\n" + DONE


def error_event(exc: GatewayError, message: str | None = None) -> bytes:
    """A failure after the stream began: OpenAI's error object as an event, then ``[DONE]``."""
    _, kind = status_of(exc)
    error = {"message": message or exc.message, "type": kind, "param": exc.param, "code": exc.code}
    return b"data: " + orjson.dumps({"error": error}) + b"\n\n" + DONE


def model_list(model: str, versions: list[int], created: int) -> bytes:
    """``GET /v1/models``: the registered model, then each served version as its own id."""
    return orjson.dumps({"object": "list", "data": _models(model, versions, created)})


def model_object(model: str, versions: list[int], created: int, wanted: str) -> bytes:
    """``GET /v1/models/{wanted}``: that entry of ``model_list``, or a 404 (``model_not_found``) naming what is."""
    entries = _models(model, versions, created)
    for entry in entries:
        if entry["id"] == wanted:
            return orjson.dumps(entry)
    served = ", ".join(repr(entry["id"]) for entry in entries)
    raise ModelNotFoundError(f"the model {wanted[:100]!r} does not exist here; these do: {served}", param="model")


def _models(model: str, versions: list[int], created: int) -> list[dict[str, Any]]:
    ids = [model, *(served_model_name(model, version) for version in versions)]
    return [{"id": name, "object": "model", "created": created, "owned_by": "registry"} for name in ids]
