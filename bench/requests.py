"""The one request every comparison sends: a golden-set question with its image, as each path takes it."""

from __future__ import annotations

import json
import struct

from core.contract import INPUT_MAX_TOKENS, INPUT_MESSAGES, OUTPUT_TEXT
from demo.traffic import _question


def chat_body() -> bytes:
    """The OpenAI chat request (gateway, nginx, the in-process baseline)."""
    body, _ = _question(0)
    return json.dumps(body).encode()


def triton_request() -> tuple[bytes, dict[str, str]]:
    """The same conversation as a raw KServe v2 request, encoded as ``tritonclient`` encodes one by
    default (the binary tensor extension: a JSON header, then the BYTES element as a 4-byte
    little-endian length and the bytes), with the ``max_tokens`` the chat body asks for, so both
    sides generate the same number of tokens. Returns the body and its headers."""
    body, _ = _question(0)
    document = json.dumps(body["messages"]).encode()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": INPUT_MESSAGES,
                    "shape": [1, 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(document) + 4},
                },
                {"name": INPUT_MAX_TOKENS, "shape": [1, 1], "datatype": "INT32", "data": [body["max_tokens"]]},
            ],
            "outputs": [{"name": OUTPUT_TEXT}],
        }
    ).encode()
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
    return header + struct.pack("<I", len(document)) + document, headers
