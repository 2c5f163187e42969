"""Synthetic users: golden-set questions with their images, sent through the public endpoint.

Several concurrent users, each a closed loop at a modest pace, like people using an app; every
user starts a new conversation (a new ``X-Session-Id``) every few requests, so the sessions spread
over the whole hash range and a canary at 5% gets its share (six fixed sessions might all miss it).
Users stream their answers (``stream: true``, server-sent events, as chat apps do) unless told not
to. Every answer is checked: its status, the version that answered (``X-Model-Version``), that the
stream ended with ``[DONE]`` and no error event, and whether the answer was right. A client-visible
error is any non-200, error event, unfinished stream or transport failure. Used by the demo, the
benchmarks and the fault tests.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tiny_model import shapes

# Questions from a stream the tiny model never trained on (seed 0 is training).
_SEED = 4242


def _question(index: int) -> tuple[dict[str, Any], str]:
    sample = shapes.sample(_SEED, index, category=shapes.CATEGORIES[index % len(shapes.CATEGORIES)])
    buffer = io.BytesIO()
    sample.image.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": sample.question}]
    body = {"model": "qwen3-vl", "messages": [{"role": "user", "content": content}], "max_tokens": 8}
    return body, sample.answer


@dataclass
class Tally:
    """What the synthetic users saw (thread-safe to read while traffic runs)."""

    requests: int = 0
    errors: int = 0
    correct: int = 0
    by_version: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    #: Time to the first content chunk of each streamed answer.
    first_token_ms: list[float] = field(default_factory=list)

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "correct": self.correct,
            "by_version": dict(self.by_version),
            "by_status": {str(k): v for k, v in self.by_status.items()},
        }


class Traffic:
    """Runs ``sessions`` closed-loop users against ``url`` in a background thread until ``stop()``."""

    def __init__(
        self,
        url: str,
        *,
        sessions: int = 6,
        pause_s: float = 0.05,
        questions: int = 60,
        turns: int = 5,
        stream: bool = True,
    ) -> None:
        self.url = url.rstrip("/") + "/v1/chat/completions"
        self.sessions = sessions
        self.stream = stream
        self.pause_s = pause_s
        self.turns = turns
        self.tally = Tally()
        self._bodies = [_question(i) for i in range(questions)]
        self._stop = threading.Event()
        self._go = threading.Event()
        self._go.set()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> Traffic:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="traffic", daemon=True)
        self._thread.start()
        return self

    def pause(self) -> None:
        """Users finish their current request and wait (a build needs the CPU more than they do)."""
        self._go.clear()

    def resume(self) -> None:
        self._go.set()

    def stop(self) -> Tally:
        self._stop.set()
        self._go.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        return self.tally

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=60)
        connector = aiohttp.TCPConnector(limit=self.sessions)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as client:
            await asyncio.gather(*(self._user(client, f"user-{n}") for n in range(self.sessions)))

    async def _user(self, client: aiohttp.ClientSession, user: str) -> None:
        rng = random.Random(user)
        sent = 0
        while not self._stop.is_set():
            if not self._go.is_set():
                await asyncio.sleep(0.1)
                continue
            session = f"{user}-conversation-{sent // self.turns}"
            sent += 1
            body, expected = rng.choice(self._bodies)
            if self.stream:
                body = {**body, "stream": True, "stream_options": {"include_usage": True}}
            started = time.perf_counter()
            status, version, detail, answer, first = 0, "", "", "", None
            try:
                async with client.post(self.url, json=body, headers={"X-Session-Id": session}) as response:
                    status = response.status
                    version = response.headers.get("X-Model-Version", "")
                    if status == 200 and self.stream:
                        answer, first, detail = await _read_stream(response, started)
                    else:
                        text = await response.text()
                        if status == 200:
                            answer = json.loads(text)["choices"][0]["message"]["content"]
                        else:
                            detail = text[:200]
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                detail = f"{type(exc).__name__}: {exc}"
            elapsed = (time.perf_counter() - started) * 1000
            ok = status == 200 and not detail
            with self._lock:
                tally = self.tally
                tally.requests += 1
                tally.by_status[status] += 1
                if ok:
                    tally.by_version[version] += 1
                    tally.correct += answer.strip().lower() == expected.lower()
                    tally.latencies_ms.append(elapsed)
                    if first is not None:
                        tally.first_token_ms.append(first)
                else:
                    tally.errors += 1
                    if len(tally.error_samples) < 10:
                        tally.error_samples.append(f"{status}: {detail}")
            await asyncio.sleep(self.pause_s)


async def _read_stream(response: aiohttp.ClientResponse, started: float) -> tuple[str, float | None, str]:
    """A streamed answer's text, the milliseconds to its first content, and what went wrong ("" if nothing)."""
    parts: list[str] = []
    first: float | None = None
    async for line in response.content:
        if not line.startswith(b"data: "):
            continue
        data = line[6:].strip()
        if data == b"[DONE]":
            return "".join(parts), first, ""
        event = json.loads(data)
        if "error" in event:
            return "".join(parts), first, f"error event: {event['error'].get('message', '')[:160]}"
        for choice in event.get("choices", []):
            piece = choice.get("delta", {}).get("content") or ""
            if piece and first is None:
                first = (time.perf_counter() - started) * 1000
            parts.append(piece)
    return "".join(parts), first, "the stream ended without [DONE]"
