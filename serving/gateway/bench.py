"""Measure the gateway's upstream hop against a real Triton: each candidate client, then the whole gateway.

Triton serves a zero-work stand-in (``serving.gateway.standin``: the real, decoupled tensor
contract, streaming ``STANDIN_TOKENS`` responses at once), so the figures are the client's, the
protocol's and the gateway's cost, not the model's. Phase 1 runs each candidate streaming client in
one uvloop loop (the gateway's): latency at concurrency 1 (p50 and p99 of the whole stream, p50 of
the first response: time to first token), throughput at concurrency 8, and the client's CPU time
per request (event-loop time a gateway worker spends per upstream call). Phase 2 starts the gateway
itself (uvicorn, uvloop, httptools, one worker, in its own process) over the stand-in and compares
"client -> Triton" with "client -> gateway -> Triton", streamed and not. Rounds alternate, so load
from elsewhere hits every path alike; medians over rounds. The last line is one JSON object.
Usage: ``python -m serving.gateway.bench [--requests 300] [--seconds 2] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from core.contract import INPUT_MAX_TOKENS, INPUT_MESSAGES, INPUT_TEMPERATURE, OUTPUT_TEXT
from registry.events import Actor, Event
from registry.state import RolloutState
from serving.gateway.errors import RegistryConflictError
from serving.gateway.registry_client import Action
from serving.gateway.standin import STANDIN_TOKENS, document, write_standin
from serving.gateway.upstream import Sampling, TritonUpstream
from serving.triton.launcher import TritonServer, free_ports
from serving.triton.settings import TritonSettings

_MODEL = "standin"
#: ``call(doc)`` streams one answer and returns when its first piece arrived (``time.perf_counter``).
Call = Callable[[bytes], Awaitable[float]]
_SAMPLING = Sampling(max_tokens=STANDIN_TOKENS, temperature=0.0)


async def _aiohttp_generate_stream(
    http_url: str, grpc_url: str, model: str
) -> tuple[Call, Callable[[], Awaitable[None]]]:
    client = TritonUpstream(http_url, timeout_s=30.0)
    await client.start()

    async def call(doc: bytes) -> float:
        first = 0.0
        async for _ in client.stream(model, doc, _SAMPLING):
            first = first or time.perf_counter()
        return first

    return call, client.close


async def _tritonclient_grpc_aio(
    http_url: str, grpc_url: str, model: str
) -> tuple[Call, Callable[[], Awaitable[None]]]:
    import tritonclient.grpc as grpc
    import tritonclient.grpc.aio as aio

    client = aio.InferenceServerClient(grpc_url)

    async def call(doc: bytes) -> float:
        inputs = []
        for name, datatype, value in (
            (INPUT_MESSAGES, "BYTES", np.array([[doc]], dtype=np.object_)),
            (INPUT_MAX_TOKENS, "INT32", np.array([[STANDIN_TOKENS]], dtype=np.int32)),
            (INPUT_TEMPERATURE, "FP32", np.array([[0.0]], dtype=np.float32)),
        ):
            tensor = grpc.InferInput(name, [1, 1], datatype)
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)

        async def requests() -> Any:
            yield {"model_name": model, "inputs": inputs}

        first, received = 0.0, 0
        stream = client.stream_infer(requests())
        async for result, error in stream:
            if error is not None:
                raise error
            result.as_numpy(OUTPUT_TEXT)
            first = first or time.perf_counter()
            received += 1
            if received == STANDIN_TOKENS:
                break
        stream.cancel()
        return first

    return call, client.close


async def _grpc_aio_raw(http_url: str, grpc_url: str, model: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    channel = grpc.aio.insecure_channel(grpc_url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

    async def call(doc: bytes) -> float:
        request = service_pb2.ModelInferRequest(model_name=model)
        for name, datatype in ((INPUT_MESSAGES, "BYTES"), (INPUT_MAX_TOKENS, "INT32"), (INPUT_TEMPERATURE, "FP32")):
            tensor = request.inputs.add()
            tensor.name, tensor.datatype = name, datatype
            tensor.shape.extend([1, 1])
        raw = [struct.pack("<I", len(doc)) + doc, struct.pack("<i", STANDIN_TOKENS), struct.pack("<f", 0.0)]
        request.raw_input_contents.extend(raw)
        first, received = 0.0, 0
        stream = stub.ModelStreamInfer(iter([request]))
        async for response in stream:
            if response.error_message:
                raise RuntimeError(response.error_message)
            outputs = dict(
                zip(
                    (o.name for o in response.infer_response.outputs),
                    response.infer_response.raw_output_contents,
                    strict=True,
                )
            )
            outputs[OUTPUT_TEXT][4:].decode()
            first = first or time.perf_counter()
            received += 1
            if received == STANDIN_TOKENS:
                break
        stream.cancel()
        return first

    async def close() -> None:
        await channel.close()

    return call, close


CANDIDATES = {
    "aiohttp HTTP generate_stream (upstream.py)": _aiohttp_generate_stream,
    "tritonclient.grpc.aio stream_infer": _tritonclient_grpc_aio,
    "grpc.aio ModelStreamInfer (protobuf by hand)": _grpc_aio_raw,
}


async def _latencies(call: Call, doc: bytes, count: int) -> tuple[list[float], list[float], float]:
    samples, firsts, cpu = [], [], time.process_time()
    for _ in range(count):
        started = time.perf_counter()
        first = await call(doc)
        samples.append(time.perf_counter() - started)
        firsts.append(first - started)
    return samples, firsts, time.process_time() - cpu


async def _throughput(call: Call, doc: bytes, concurrency: int, seconds: float) -> float:
    done, deadline = 0, time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await call(doc)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


async def _rounds(paths: dict[str, Call], doc: bytes, requests: int, seconds: float, rounds: int) -> dict[str, Any]:
    for call in paths.values():
        for _ in range(50):  # connections open, code paths warm
            await call(doc)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
    for number in range(1, rounds + 1):
        order = list(paths.items()) if number % 2 else list(reversed(paths.items()))
        for name, call in order:
            latencies, firsts, cpu = await _latencies(call, doc, requests)
            figures = {
                "p50_ms": statistics.median(latencies) * 1000,
                "p99_ms": statistics.quantiles([s * 1000 for s in latencies], n=100)[98],
                "ttft_p50_ms": statistics.median(firsts) * 1000,
                "rps_c8": await _throughput(call, doc, 8, seconds),
                "client_cpu_us": cpu / requests * 1e6,
            }
            results[name].append(figures)
            _say(f"round {number} {name}: {json.dumps({k: round(v, 3) for k, v in figures.items()})}")
    return {
        name: {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]} for name, runs in results.items()
    }


async def candidates(http_url: str, grpc_url: str, model: str, doc: bytes, **how: Any) -> dict[str, Any]:
    """Phase 1: every candidate client against Triton."""
    paths, closers = {}, []
    for name, start in CANDIDATES.items():
        call, close = await start(http_url, grpc_url, model)
        paths[name] = call
        closers.append(close)
    try:
        return await _rounds(paths, doc, **how)
    finally:
        for close in closers:
            await close()


class _OneChampion:
    """A registry that names v1 champion and never changes (the gateway's ``RegistryPort``)."""

    model = _MODEL

    def read_state(self) -> RolloutState:
        return RolloutState(model=_MODEL, aliases={"champion": 1}, canary_weight=0, generation=1)

    def history(self, limit: int) -> list[Event]:
        return []

    def controller(self) -> dict[str, Any] | None:
        return None

    def act(self, action: Action, actor: Actor) -> Event:
        raise RegistryConflictError("the benchmark's registry is read-only")


def serve_gateway(port: int, triton_url: str) -> None:
    """The gateway as ``python -m serving.gateway`` runs it, over the stand-in (a child process's target)."""
    import uvicorn

    from serving.gateway.app import create_app
    from serving.gateway.settings import GatewaySettings

    settings = GatewaySettings(dev=True, port=port, triton_url=triton_url, log_level="warning")
    app = create_app(settings, registry=_OneChampion())
    uvicorn.run(app, port=port, loop="uvloop", http="httptools", log_level="warning", access_log=False)


async def gateway_hop(gateway_url: str, http_url: str, model: str, doc: bytes, **how: Any) -> dict[str, Any]:
    """Phase 2: the chosen client straight to Triton, and the same request through the gateway (both ways)."""
    import aiohttp

    direct = TritonUpstream(http_url, timeout_s=30.0)
    await direct.start()
    messages = orjson.loads(doc)
    bodies = {
        stream: orjson.dumps({"model": _MODEL, "messages": messages, "max_tokens": STANDIN_TOKENS, "stream": stream})
        for stream in (False, True)
    }
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(skip_auto_headers=("Accept-Encoding",)) as session:
        for _ in range(600):  # the child process starts and finds the stand-in ready
            try:
                async with session.get(f"{gateway_url}/readyz") as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)

        def via_gateway(stream: bool) -> Call:
            async def call(_: bytes) -> float:
                first = 0.0
                async with session.post(
                    f"{gateway_url}/v1/chat/completions", data=bodies[stream], headers=headers
                ) as response:
                    if response.status != 200:
                        raise RuntimeError(f"gateway answered {response.status}: {await response.text()}")
                    async for _chunk in response.content.iter_any():
                        first = first or time.perf_counter()
                return first

            return call

        async def straight(payload: bytes) -> float:
            first = 0.0
            async for _ in direct.stream(model, payload, _SAMPLING):
                first = first or time.perf_counter()
            return first

        paths = {
            "client -> Triton": straight,
            "client -> gateway -> Triton": via_gateway(False),
            "client -> gateway -> Triton, streamed": via_gateway(True),
        }
        try:
            figures = await _rounds(paths, doc, **how)
        finally:
            await direct.close()
    direct_p50 = figures["client -> Triton"]["p50_ms"]
    figures["gateway_adds_p50_ms"] = round(figures["client -> gateway -> Triton"]["p50_ms"] - direct_p50, 3)
    streamed = figures["client -> gateway -> Triton, streamed"]["ttft_p50_ms"]
    figures["gateway_adds_ttft_p50_ms"] = round(streamed - figures["client -> Triton"]["ttft_p50_ms"], 3)
    return figures


def run(workdir: Path, *, image_side: int, gateway: bool, **how: Any) -> dict[str, Any]:
    import uvloop

    repository = workdir / "repository"
    model = write_standin(repository, _MODEL, 1)
    doc = document(image_side)
    http, grpc, metrics, port = free_ports(4)
    settings = TritonSettings(http_port=http, grpc_port=grpc, metrics_port=metrics, exit_timeout_secs=1)
    summary: dict[str, Any] = {"image_side": image_side, "payload_bytes": len(doc)}
    with TritonServer(repository, settings, run_dir=workdir / "run", load_models=[model]) as server:
        summary["candidates"] = uvloop.run(candidates(server.http_url, server.grpc_url, model, doc, **how))
        if gateway:
            child = multiprocessing.get_context("spawn").Process(target=serve_gateway, args=(port, server.http_url))
            child.start()
            try:
                summary["gateway"] = uvloop.run(
                    gateway_hop(f"http://127.0.0.1:{port}", server.http_url, model, doc, **how)
                )
            finally:
                child.terminate()
                child.join(10)
    return summary


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="sequential requests per round (c1 latency)")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one c8 throughput phase")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds")
    parser.add_argument("--image-side", type=int, default=64, help="64: the task's PNG; larger: incompressible noise")
    parser.add_argument("--no-gateway", action="store_true", help="skip phase 2 (the whole gateway)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as workdir:
        summary = run(
            Path(workdir),
            image_side=args.image_side,
            gateway=not args.no_gateway,
            requests=args.requests,
            seconds=args.seconds,
            rounds=args.rounds,
        )
    _say(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
