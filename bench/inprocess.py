"""The setup a user would otherwise pick: ``transformers.generate`` inside a FastAPI handler.

The same weights and precision as the Triton side: the served build's own version folder, loaded by
the backend's own ``load_model`` in the compute dtype its config.pbtxt names (``COMPUTE_DTYPE``), so
a quantized build is quantized here too. One model in the server process, one request at a time (a
lock: generate is not re-entrant and two at once only fight over the cores), the same OpenAI-style
request as the gateway takes. Run: ``python -m bench.inprocess --port 8900 --model-dir DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.util
import io
import sys
import threading
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

from fastapi import FastAPI, HTTPException
from PIL import Image
from pydantic import BaseModel

from core.contract import CONFIG_FILE, PARAM_COMPUTE_DTYPE, parse_config


class _Request(BaseModel):
    messages: list[dict[str, Any]]
    max_tokens: int = 8


def _decode(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Image.Image]]:
    rendered, images = [], []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") == "image_url":
                    payload = part["image_url"]["url"].partition(",")[2]
                    images.append(Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB"))
                    parts.append({"type": "image"})
                else:
                    parts.append({"type": "text", "text": part["text"]})
            content = parts
        rendered.append({"role": message["role"], "content": content})
    return rendered, images


def backend_module(model_py: Path) -> ModuleType:
    """The build's model.py imported the way the stub imports it, next to the real triton_python_backend_utils."""
    from serving.triton.launcher import _pytriton_root

    sys.path.insert(0, str(_pytriton_root() / "tritonserver" / "backends" / "python"))
    spec = importlib.util.spec_from_file_location("bench_backend_model", model_py)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot import {model_py}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def served_precision(model_dir: Path) -> tuple[Path, str]:
    """The version folder and compute dtype a model folder (``<model>-v<N>/``) serves."""
    config = parse_config((model_dir / CONFIG_FILE).read_text())
    (version,) = config.version_policy.specific.versions
    return model_dir / str(version), config.parameters[PARAM_COMPUTE_DTYPE].string_value


def create_app(model_dir: Path) -> FastAPI:
    import torch
    from transformers import AutoProcessor

    folder, dtype = served_precision(model_dir)
    processor = AutoProcessor.from_pretrained(folder)
    model = backend_module(folder / "model.py").load_model(folder, "cpu", dtype).eval()
    lock = threading.Lock()
    app = FastAPI(title="in-process baseline")

    def answer(request: _Request) -> tuple[str, int, int]:
        rendered, images = _decode(request.messages)
        prompt = processor.apply_chat_template(rendered, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[prompt], images=images or None, return_tensors="pt")
        with lock, torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=request.max_tokens, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1] :]
        text = processor.decode(new, skip_special_tokens=True).strip()
        return text, int(inputs["input_ids"].shape[1]), len(new)

    @app.post("/v1/chat/completions")
    async def chat(request: _Request) -> dict[str, Any]:
        try:
            text, prompt_tokens, completion_tokens = await asyncio.to_thread(answer, request)
        except (KeyError, ValueError, OSError) as exc:
            raise HTTPException(400, str(exc)) from exc
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "in-process",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.inprocess", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--model-dir", type=Path, required=True, help="a served model folder, <model>-v<N>/")
    args = parser.parse_args()
    uvicorn.run(create_app(args.model_dir), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
