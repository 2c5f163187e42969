"""A test-only Triton model: the real ``model.py`` (beside it as ``real_model.py``), failing a share of requests.

Packaged by tests/verdicts/test_verdicts.py into a build's version folder, never shipped. The share
comes from ``fail_percent.txt`` beside it (the real model refuses config parameters it does not
read). A failed request gets Triton's error response (a 500 to its client) while the rest of the
batch is answered by the real model, in the real model's transaction policy (decoupled or not).
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path
from typing import Any

import triton_python_backend_utils as pb_utils

_spec = importlib.util.spec_from_file_location("real_model", Path(__file__).with_name("real_model.py"))
assert _spec is not None and _spec.loader is not None
_real = importlib.util.module_from_spec(_spec)
sys.modules["real_model"] = _real  # dataclasses look their module up while the class is made
_spec.loader.exec_module(_real)


class TritonPythonModel(_real.TritonPythonModel):  # type: ignore[misc,name-defined]
    def initialize(self, args: dict[str, str]) -> None:
        super().initialize(args)
        config = json.loads(args["model_config"])
        self._fail = float(Path(__file__).with_name("fail_percent.txt").read_text()) / 100
        self._decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self._draw = random.Random(20261204)

    def execute(self, requests: list[Any]) -> list[Any] | None:
        doomed = [self._draw.random() < self._fail for _ in requests]
        # The real model's words for a failure of its own (core.contract.INTERNAL_ERROR): a 5xx, not the client's 400.
        error = pb_utils.TritonError(
            "internal error: flaky_model: injected failure inside the backend", pb_utils.TritonError.INTERNAL
        )
        kept = [r for r, d in zip(requests, doomed, strict=True) if not d]
        if self._decoupled:
            for request, fail in zip(requests, doomed, strict=True):
                if fail:
                    request.get_response_sender().send(
                        pb_utils.InferenceResponse(error=error), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
                    )
            if kept:
                super().execute(kept)
            return None
        answers = iter(super().execute(kept) if kept else [])
        return [pb_utils.InferenceResponse(error=error) if d else next(answers) for d in doomed]
