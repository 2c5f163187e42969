"""Time to first token: streamed answers through nginx + gateway against Triton's own stream, alternated.

Both sides ask the same question with the same token budget and time, per request, the first event
that carries text (the gateway's first content chunk; Triton's first ``generate_stream`` event) and
the whole answer; closed-loop threads on keep-alive connections (``http.client``: the same client both
sides, so its cost cancels in the ratio). Output tokens per second are the completion tokens of every
answer over the run's seconds.
"""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from bench.load import alternate
from bench.requests import chat_body, triton_request


def _stream_once(
    conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str]
) -> tuple[float, float, int]:
    """(seconds to the first text, seconds to the end, completion tokens) of one streamed answer."""
    started = time.perf_counter()
    conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"{path} answered {response.status}: {response.read()[:200]!r}")
    first, tokens = None, 0
    while line := response.readline():
        if not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
            continue
        event = json.loads(line[5:])
        if "choices" in event:  # the gateway's OpenAI chunks
            text = "".join((c.get("delta") or {}).get("content") or "" for c in event["choices"])
            tokens = (event.get("usage") or {}).get("completion_tokens", tokens)
        else:  # Triton's generate_stream events: the contract's outputs by name
            text = str(event.get("text") or "")
            tokens = int(event.get("completion_tokens") or tokens)
        if text and first is None:
            first = time.perf_counter() - started
    return (first if first is not None else float("nan")), time.perf_counter() - started, tokens


def _side(url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float) -> dict[str, float]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    samples: list[tuple[float, float, int]] = []
    failures: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        try:
            while time.monotonic() < deadline:
                try:
                    sample = _stream_once(conn, parts.path, body, headers)
                except (OSError, RuntimeError, http.client.HTTPException, ValueError) as exc:
                    with lock:
                        failures.append(str(exc))
                    conn.close()
                    conn = http.client.HTTPConnection(host, port, timeout=60)
                    continue
                with lock:
                    samples.append(sample)
        finally:
            conn.close()

    started = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    firsts = sorted(s[0] * 1000 for s in samples if s[0] == s[0])
    if not firsts:
        raise RuntimeError(f"no streamed answer from {url}: {failures[:3]}")

    def pct(q: float) -> float:
        return round(firsts[min(len(firsts) - 1, int(q * len(firsts)))], 2)

    return {
        "ttft_p50_ms": round(statistics.median(firsts), 2),
        "ttft_p95_ms": pct(0.95),
        "e2e_p50_ms": round(statistics.median(s[1] * 1000 for s in samples), 2),
        "output_tokens_per_s": round(sum(s[2] for s in samples) / wall, 1),
        "answers": len(samples),
        "failed": len(failures),
    }


def measure(stack: Any, rounds: int, seconds: float) -> dict[str, Any]:
    """TTFT p50/p95 at concurrency 1 and 8, through nginx and straight to Triton; the c1 p50 ratio."""
    chat = json.loads(chat_body()) | {"stream": True, "stream_options": {"include_usage": True}}
    nginx = (f"{stack.edge_url}/v1/chat/completions", json.dumps(chat).encode(), {"Content-Type": "application/json"})
    direct_body, direct_headers = triton_request()
    direct = (f"{stack.triton_url}/v2/models/{stack.store.model}-v1/generate_stream", direct_body, direct_headers)
    out: dict[str, Any] = {"measured": True, "rounds": rounds, "seconds_per_run": seconds}
    targets: dict[str, tuple[str, bytes, dict[str, str]]] = {"nginx": nginx, "direct": direct}
    for concurrency in (1, 8):

        def run(name: str, level: int = concurrency) -> dict[str, float]:
            url, body, headers = targets[name]
            return _side(url, body, headers, level, seconds)

        sides = {name: (lambda name=name: run(name)) for name in targets}
        medians, _ = alternate(sides, rounds, f"ttft c{concurrency}")
        out[f"c{concurrency}"] = medians
    out["ratio"] = round(out["c1"]["nginx"]["ttft_p50_ms"] / out["c1"]["direct"]["ttft_p50_ms"], 3)
    return out
