"""A zero-work stand-in for the served model, for benchmarks: the real tensor contract, an instant answer.

Triton runs it like any version (``<model>-v<N>/config.pbtxt`` rendered by ``core.contract``), so
a client talking to it pays everything a real request pays except the model's own work.
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

#: A Python-backend model with the real contract that answers at once: the upstream hop, nothing else.
STANDIN_MODEL = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.version = args["model_version"].encode()

    def execute(self, requests):
        responses = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "messages").as_numpy().reshape(-1)[0]
            messages = json.loads(bytes(raw))
            parts = messages[-1]["content"]
            text = parts if isinstance(parts, str) else " ".join(p.get("text", "") for p in parts)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("text", np.array([[("echo: " + text).encode()]], dtype=np.object_)),
                pb_utils.Tensor("prompt_tokens", np.array([[len(text.split())]], dtype=np.int32)),
                pb_utils.Tensor("completion_tokens", np.array([[2]], dtype=np.int32)),
                pb_utils.Tensor("model_version", np.array([[self.version]], dtype=np.object_)),
            ]))
        return responses
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
