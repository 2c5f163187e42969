"""Fixtures for the gateway tests: settings, an app over fakes, images, and a wait helper."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from serving.gateway.app import create_app
from serving.gateway.settings import GatewaySettings
from tests.gateway.fakes import FakeRegistry, FakeUpstream
from tiny_model import shapes

TOKEN = "test-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def gateway_settings(**overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "admin_token": TOKEN,
        "registry_poll_s": 0.05,
        "triton_poll_s": 0.05,
        "triton_url": "http://127.0.0.1:9",
        "upstream_timeout_s": 5.0,
    }
    values.update(overrides)
    return GatewaySettings(**values)


def png(side: int = 64, seed: int = 7) -> bytes:
    image = shapes.sample(seed, 0).image
    if side != image.width:
        image = image.resize((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def noise_png(side: int) -> bytes:
    """A PNG that does not compress: about ``3 * side**2`` bytes."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def chat_body(text: str = "What color are the shapes?", image: str | None = None, **extra: Any) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if image is not None:
        content.append({"type": "image_url", "image_url": {"url": image}})
    content.append({"type": "text", "text": text})
    return {"model": "qwen3-vl", "messages": [{"role": "user", "content": content}], **extra}


def wait_for(check: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    """Poll ``check`` until true; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


class Harness:
    """An app over fakes, driven through Starlette's TestClient (lifespan and background tasks run)."""

    def __init__(self, registry: FakeRegistry, upstream: FakeUpstream, **settings: Any) -> None:
        self.registry = registry
        self.upstream = upstream
        self.settings = gateway_settings(**settings)
        self.app = create_app(self.settings, registry=registry, upstream=upstream)
        self.client = TestClient(self.app, raise_server_exceptions=False)

    def __enter__(self) -> Harness:
        self.client.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.__exit__(*exc)

    def wait_split(self, champion: int | None, canary: int | None = None, ready: set[int] | None = None) -> None:
        def current() -> bool:
            view = self.app.state.reconciler.view
            ok = view.alias("champion") == champion and view.alias("canary") == canary
            return ok and (ready is None or set(view.ready) == ready)

        wait_for(current, what=f"the gateway to see champion {champion}, canary {canary}, ready {ready}")


@pytest.fixture
def harness() -> Iterator[Callable[..., Harness]]:
    """``harness(aliases, weight, versions, **settings)``: a started app; champion v1 and canary v2 by default."""
    opened: list[Harness] = []

    def build(
        aliases: dict[str, int] | None = None, weight: int = 0, versions: tuple[int, ...] = (1, 2), **settings: Any
    ) -> Harness:
        chosen = {"champion": 1, "canary": 2} if aliases is None else aliases
        h = Harness(FakeRegistry(chosen, weight), FakeUpstream.serving(*versions), **settings)
        h.__enter__()
        opened.append(h)
        h.wait_split(chosen.get("champion"), chosen.get("canary"), set(versions))
        return h

    yield build
    for h in opened:
        h.__exit__(None, None, None)
