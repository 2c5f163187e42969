"""The one request every comparison sends: a golden-set question with its image, as each path takes it."""

from __future__ import annotations

import json

from demo.traffic import _question


def chat_body() -> bytes:
    """The OpenAI chat request (gateway, nginx, the in-process baseline)."""
    body, _ = _question(0)
    return json.dumps(body).encode()


def triton_request() -> tuple[bytes, dict[str, str]]:
    """The same conversation as a request to Triton's ``generate_stream`` endpoint (the served model is
    decoupled, so KServe ``/infer`` refuses it), built as the gateway builds it: every input of the
    contract and the ``max_tokens`` the chat body asks for, so both sides generate the same number of
    tokens. Returns the body and its headers."""
    from serving.gateway.upstream import Sampling, generate_request

    body, _ = _question(0)
    sampling = Sampling(max_tokens=body["max_tokens"], temperature=0.0, top_p=1.0, seed=0)
    return generate_request(json.dumps(body["messages"]).encode(), sampling), {"Content-Type": "application/json"}
