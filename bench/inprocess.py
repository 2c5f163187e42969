"""The setup a user would otherwise pick: ``transformers.generate`` inside a FastAPI handler.

One model in the server process, one request at a time (a lock: generate is not re-entrant and
two at once only fight over the cores), the same OpenAI-style request as the gateway takes, so the
benchmark sends identical traffic to both. Run: ``python -m bench.inprocess --port 8900``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from PIL import Image
from pydantic import BaseModel

from tiny_model import CHECKPOINT_DIR


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


def create_app(checkpoint: Path) -> FastAPI:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32).eval()
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
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT_DIR)
    args = parser.parse_args()
    uvicorn.run(create_app(args.checkpoint), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
