"""How the gateway reads Triton's refusals: the client's fault, the version's, or Triton's state."""

from __future__ import annotations

import orjson

from core.contract import INTERNAL_ERROR
from serving.gateway.errors import UpstreamFailedError, UpstreamNotReadyError, UpstreamRejectedError
from serving.gateway.upstream import _classify


def _body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def test_a_model_failure_is_the_versions_even_when_triton_answers_400() -> None:
    # Triton answers a decoupled model's error response 400 whatever its code: model.py's own words decide.
    failed = _classify(400, _body(f"{INTERNAL_ERROR}: CUDA out of memory"))
    assert isinstance(failed, UpstreamFailedError) and failed.retryable
    refused = _classify(400, _body("messages: image 1 is larger than MAX_IMAGE_PIXELS"))
    assert isinstance(refused, UpstreamRejectedError) and not refused.retryable
    assert isinstance(_classify(400, b'data: {"error": "internal error: boom"}'), UpstreamFailedError)
    assert isinstance(_classify(404, _body("unknown model")), UpstreamNotReadyError)
