"""The harness's one way to compare: sides alternated over rounds, medians per side; and the loads it runs.

HTTP load comes from ``wrk`` in a second process (``bench.wrk``); ``closed_loop`` drives a Python client
(``TritonChatClient``, gRPC) in threads, for a caller without an HTTP URL to aim wrk at (scripts/gpu_smoke.py).
"""

from __future__ import annotations

import http.client
import logging
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from bench import wrk

log = logging.getLogger(__name__)

#: Held-out questions (seed 0 is training), varied so no two consecutive requests are the same.
_SEED = 7
_SAMPLES = 16


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def alternate(
    sides: Mapping[str, Callable[[], dict[str, Any]]], rounds: int, label: str
) -> tuple[dict[str, dict[str, float]], dict[str, list[dict[str, Any]]]]:
    """Run every side once per round, in reversed order every other round; medians and every round's figures.

    On a shared machine load from elsewhere comes and goes: alternating puts it on every side alike, and
    ratios of one run's medians hold where absolute figures swing. Medians are of the numeric figures;
    anything else a side returns (Triton's statistics, say) stays in the rounds.
    """
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    for index in range(rounds):
        for name in list(sides) if index % 2 == 0 else list(sides)[::-1]:
            figures = sides[name]()
            runs[name].append(figures)
            log.info("%s round %d %-10s %s", label, index + 1, name, _brief(figures))
    medians = {
        name: {key: median([r[key] for r in rs]) for key, value in rs[0].items() if _numeric(value)}
        for name, rs in runs.items()
    }
    return medians, runs


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _brief(figures: dict[str, Any]) -> str:
    return " ".join(f"{k} {v:.1f}" for k, v in figures.items() if _numeric(v))


def http_figures(url: str, body: bytes, headers: dict[str, str], connections: int, seconds: float) -> dict[str, float]:
    """One wrk run as figures: p50, p99, max (ms), req/s and failed requests."""
    done = wrk.load(url, body, connections=connections, seconds=seconds, headers=headers)
    return {"p50_ms": done.p50_ms, "p99_ms": done.p99_ms, "max_ms": done.max_ms, "rps": done.rps,
            "failed": done.failed}  # fmt: skip


#: One target of ``interleaved``: URL, body, headers.
Target = tuple[str, bytes, Mapping[str, str]]


def interleaved(targets: Mapping[str, Target], seconds: float) -> dict[str, Any]:
    """One client, its requests alternating over the targets (A B, then B A, ...), each target on its own
    keep-alive connection, for about ``seconds``: every latency in ms per target, and the failed requests.

    Two wrk runs one after the other meet different moments of a shared machine, and a p99 of a few hundred
    requests is its few slowest; requests taken turn about see the same seconds, so a difference between
    the targets' tails is the paths', and every sample is kept for an interval on it
    (``quantile_difference``).
    """
    names = list(targets)
    connections = {name: _connection(targets[name][0]) for name in names}
    latencies: dict[str, list[float]] = {name: [] for name in names}
    failed = 0
    deadline = time.perf_counter() + seconds
    turn = 0
    try:
        while time.perf_counter() < deadline:
            for name in names if turn % 2 == 0 else names[::-1]:
                url, body, headers = targets[name]
                started = time.perf_counter()
                try:
                    connection = connections[name]
                    sent = {"Content-Type": "application/json", **headers}
                    connection.request("POST", urlsplit(url).path, body, sent)
                    response = connection.getresponse()
                    response.read()
                    ok = response.status == 200
                except (OSError, http.client.HTTPException):
                    connections[name].close()
                    connections[name] = _connection(url)
                    ok = False
                if ok:
                    latencies[name].append((time.perf_counter() - started) * 1000.0)
                else:
                    failed += 1
            turn += 1
    finally:
        for connection in connections.values():
            connection.close()
    return {"latencies_ms": latencies, "failed": failed}


def _connection(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"interleaved load takes http:// URLs, got {url!r}")
    return http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=30)


def quantile_difference(
    base: Sequence[float], other: Sequence[float], q: float, *, resamples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """``other``'s ``q`` quantile minus ``base``'s, with a 95% bootstrap interval (each side resampled on its own).

    Returns ``value`` (from the samples themselves), ``low`` and ``high`` (the 2.5th and 97.5th percentiles
    of the resampled differences), rounded to 0.01.
    """
    a, b = np.asarray(base, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if a.size < 2 or b.size < 2:
        raise ValueError(f"a quantile difference needs at least 2 samples a side, got {a.size} and {b.size}")
    rng = np.random.default_rng(seed)
    differences = np.empty(resamples)
    for start in range(0, resamples, 200):  # in blocks: a resample of every sample at once is 2000 x n floats
        block = min(200, resamples - start)
        resampled_b = np.quantile(rng.choice(b, (block, b.size)), q, axis=1)
        differences[start : start + block] = resampled_b - np.quantile(rng.choice(a, (block, a.size)), q, axis=1)
    low, high = np.quantile(differences, [0.025, 0.975])
    value = float(np.quantile(b, q) - np.quantile(a, q))
    return {"value": round(value, 2), "low": round(float(low), 2), "high": round(float(high), 2)}


def conversations() -> list[list[dict[str, Any]]]:
    """Held-out questions with their images, as chat messages."""
    from serving.triton.client import user_message
    from tiny_model import shapes

    samples = [shapes.sample(_SEED, index) for index in range(_SAMPLES)]
    return [[user_message(sample.question, [sample.image])] for sample in samples]


def closed_loop(client: Any, asked: list[list[dict[str, Any]]], concurrency: int, seconds: float) -> tuple[int, float]:
    """Requests ``concurrency`` closed-loop threads completed through ``client.chat`` in about ``seconds``."""
    counts = [0] * concurrency
    errors: list[BaseException] = []
    deadline = time.perf_counter() + seconds

    def worker(slot: int) -> None:
        try:
            while time.perf_counter() < deadline:
                client.chat(asked[(slot + counts[slot] * concurrency) % len(asked)])
                counts[slot] += 1
        except BaseException as exc:  # surfaced below: a silent thread would fake a low rate
            errors.append(exc)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(slot,)) for slot in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{client.model_name} failed under load: {errors[0]!r}") from errors[0]
    return sum(counts), time.perf_counter() - started
