"""A zero-work stand-in for the served model, for benchmarks: the real tensor contract, instant answers.

Triton runs it like any version (``<model>-v<N>/config.pbtxt`` rendered by ``core.contract``): it
is decoupled and streams ``STANDIN_TOKENS`` responses per request, one word each, the last flagged
final with its ``finish_reason``; so a client talking to it pays everything a real request pays
except the model's own work.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import orjson
from PIL import Image

from core.contract import CONFIG_FILE, ServingParams, render_config
from core.names import served_model_name
from tiny_model import shapes

#: Responses the stand-in streams per request (a short answer's worth of tokens).
STANDIN_TOKENS = 8

#: A decoupled Python-backend model with the real contract that streams at once: the hop, nothing else.
STANDIN_MODEL = f"""
import json
import numpy as np
import triton_python_backend_utils as pb_utils

TOKENS = {STANDIN_TOKENS}


def _tensor(name, value):
    dtype = np.object_ if isinstance(value, bytes) else np.int32
    return pb_utils.Tensor(name, np.array([[value]], dtype=dtype))


class TritonPythonModel:
    def initialize(self, args):
        self.version = args["model_version"].encode()

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            raw = pb_utils.get_input_tensor_by_name(request, "messages").as_numpy().reshape(-1)[0]
            messages = json.loads(bytes(raw))
            parts = messages[-1]["content"]
            text = parts if isinstance(parts, str) else " ".join(p.get("text", "") for p in parts)
            words = ("echo: " + text).split() or ["echo:"]
            for index in range(TOKENS):
                last = index == TOKENS - 1
                outputs = {{
                    "text": (words[index % len(words)] + " ").encode(),
                    "prompt_tokens": len(text.split()),
                    "completion_tokens": index + 1,
                    "model_version": self.version,
                    "finish_reason": b"length" if last else b"",
                    "token_logprobs": b"",
                }}
                response = pb_utils.InferenceResponse([_tensor(name, value) for name, value in outputs.items()])
                flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if last else 0
                sender.send(response, flags=flags)
        return None
"""


def standin_params() -> ServingParams:
    """Serving params of the stand-in: no batching delay, so nothing but the hop is timed."""
    return ServingParams(
        max_batch_size=8,
        dynamic_batching=False,
        preferred_batch_sizes=[],
        max_queue_delay_us=0,
        max_queue_size=64,
        queue_timeout_us=10_000_000,
        instance_count=1,
        instance_kind="cpu",
        compute_dtype="float32",
        max_new_tokens=8,
        temperature=0.0,
        top_p=1.0,
        max_history=2,
        max_images=4,
        max_image_pixels=1 << 20,
        max_prompt_tokens=4096,
    )


def write_standin(repository: Path, model: str, version: int) -> str:
    """Write the stand-in as Triton model ``<model>-v<version>``; return that name."""
    name = served_model_name(model, version)
    folder = repository / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    (folder / str(version) / "model.py").write_text(STANDIN_MODEL)
    (folder / CONFIG_FILE).write_text(render_config(name, version, standin_params(), warmup=False))
    return name


def document(image_side: int) -> bytes:
    """One conversation as the ``messages`` tensor holds it: a PNG data URI and a question.

    The task's own 64x64 images compress to a few hundred bytes; any other side is noise, which
    PNG cannot compress (a photo-sized payload).
    """
    sample = shapes.sample(7, 0)
    image = sample.image
    if image_side != image.width:
        pixels = np.random.default_rng(0).integers(0, 256, (image_side, image_side, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": sample.question}]
    return orjson.dumps([{"role": "user", "content": content}])
