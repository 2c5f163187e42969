"""OpenAI's chat-completions wire format: the request the gateway accepts and the answers it writes.

Accepted: ``model`` (the registered model, or ``<model>-v<N>`` to pin a served version),
``messages`` (system/user/assistant, content a string or text and ``image_url`` parts),
``max_tokens`` (or ``max_completion_tokens``), ``temperature``, ``top_p``, ``user``, ``stream``,
``stream_options.include_usage``, ``n`` (1 only). Other fields OpenAI defines are ignored, as
OpenAI-compatible servers do. ``max_tokens`` is a cap: the served version's ``MAX_NEW_TOKENS``
caps it further. ``top_p`` is checked but the version's config ``TOP_P`` applies (the tensor
contract has no top_p input).

Streaming: the model answers in one piece (its Triton model is not decoupled), so a stream is
the role chunk, one content chunk with the whole answer, the finish chunk, the optional usage
chunk, then ``data: [DONE]``; clients that read streams work unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.names import served_model_name
from serving.gateway.upstream import Inference


class _Lenient(BaseModel):
    # Lenient about fields it does not know, as OpenAI-compatible servers are; strict about the types of
    # those it does, as OpenAI is (`"temperature": false` or `"max_tokens": "5"` is a 400, not 0 or 5).
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ImageURL(_Lenient):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Lenient):
    type: Literal["image_url"]
    image_url: ImageURL


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(_Lenient):
    role: Literal["system", "user", "assistant"]
    content: str | Annotated[list[Part], Field(min_length=1)]
    name: str | None = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatRequest(_Lenient):
    """One ``POST /v1/chat/completions`` body."""

    model: str = Field(min_length=1, max_length=200)
    messages: list[Message] = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(None, ge=1, le=1_000_000)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    user: str | None = Field(None, max_length=256)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1)

    @model_validator(mode="after")
    def _conversation(self) -> ChatRequest:
        if self.messages[-1].role != "user":
            raise ValueError("the last message must come from the user")
        if any(message.role == "system" for message in self.messages[1:]):
            raise ValueError("a system message may only come first")
        return self

    @property
    def token_cap(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

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
        out.append({"role": message.role, "content": content})
    return orjson.dumps(out)


def finish_reason(answer: Inference, cap: int | None) -> Literal["stop", "length"]:
    """``length`` when the answer used every token it was allowed."""
    return "length" if cap is not None and answer.completion_tokens >= cap else "stop"


def _usage(answer: Inference) -> dict[str, int]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
    }


def completion(request_id: str, created: int, model: str, answer: Inference, cap: int | None) -> bytes:
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
                    "logprobs": None,
                    "finish_reason": finish_reason(answer, cap),
                }
            ],
            "usage": _usage(answer),
        }
    )


def chunks(
    request_id: str, created: int, model: str, answer: Inference, cap: int | None, include_usage: bool
) -> list[bytes]:
    """The server-sent events of a streamed answer, ``data: [DONE]`` last."""
    base = {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": f"v{answer.model_version}",
    }

    def event(delta: dict[str, Any], reason: str | None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        return {**base, "choices": [choice], **({"usage": None} if include_usage else {})}

    events = [
        event({"role": "assistant", "content": ""}, None),
        event({"content": answer.text}, None),
        event({}, finish_reason(answer, cap)),
    ]
    if include_usage:
        events.append({**base, "choices": [], "usage": _usage(answer)})
    return [b"data: " + orjson.dumps(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]


def model_list(model: str, versions: list[int], created: int) -> bytes:
    """``GET /v1/models``: the registered model, then each served version as its own id."""
    ids = [model, *(served_model_name(model, version) for version in versions)]
    data = [{"id": name, "object": "model", "created": created, "owned_by": "registry"} for name in ids]
    return orjson.dumps({"object": "list", "data": data})
