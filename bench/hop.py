"""What the gateway hop itself costs: a zero-work stand-in model in Triton, reached directly and through the gateway.

The stand-in has the real tensor contract and answers at once, so "gateway minus direct" here is the
hop's own cost (HTTP in, the upstream client, JSON out), free of the model's work competing with it
for the cores. The gateway runs as ``python -m serving.gateway`` does (uvicorn, uvloop, httptools, one
worker) in its own process, over a registry that names v1 champion and never changes.
"""

from __future__ import annotations

import json
import multiprocessing
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.load import alternate, http_figures
from core.contract import CONFIG_FILE, ServingParams, render_config
from core.names import served_model_name
from registry.events import Actor, Event
from registry.state import RolloutState
from serving.gateway.errors import RegistryConflictError
from serving.gateway.registry_client import Action
from serving.triton.launcher import TritonServer, free_ports
from serving.triton.settings import TritonSettings

MODEL = "standin"

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
    """No batcher and no queue delay, so nothing but the hop is timed; two instances, as every build has."""
    return ServingParams(
        max_batch_size=8,
        dynamic_batching=False,
        preferred_batch_sizes=[],
        max_queue_delay_us=0,
        max_queue_size=64,
        queue_timeout_us=10_000_000,
        instance_count=2,
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


def write_standin(repository: Path, version: int = 1) -> str:
    """Write the stand-in as Triton model ``standin-v<version>``; return that name."""
    name = served_model_name(MODEL, version)
    folder = repository / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    (folder / str(version) / "model.py").write_text(STANDIN_MODEL)
    (folder / CONFIG_FILE).write_text(render_config(name, version, standin_params(), warmup=False))
    return name


class _OneChampion:
    """A registry that names v1 champion and never changes (the gateway's ``RegistryPort``)."""

    model = MODEL

    def read_state(self) -> RolloutState:
        return RolloutState(model=MODEL, aliases={"champion": 1}, canary_weight=0, generation=1)

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


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def measure(
    workdir: Path, rounds: int, seconds: float, body: bytes, direct: tuple[bytes, dict[str, str]]
) -> dict[str, Any]:
    """Direct to the stand-in vs through the gateway: p50/p99 at concurrency 1, req/s at 8, alternated."""
    model = write_standin(workdir / "repository")
    http, grpc, metrics, port = free_ports(4)
    settings = TritonSettings(http_port=http, grpc_port=grpc, metrics_port=metrics, exit_timeout_secs=1)
    with TritonServer(workdir / "repository", settings, run_dir=workdir / "run", load_models=[model]) as server:
        child = multiprocessing.get_context("spawn").Process(target=serve_gateway, args=(port, server.http_url))
        child.start()
        try:
            gateway = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while not _ready(gateway):
                if not child.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the gateway over the stand-in did not become ready (exit code {child.exitcode})"
                    )
                time.sleep(0.1)
            chat = json.loads(body) | {"model": MODEL}
            targets = {
                "direct": (f"{server.http_url}/v2/models/{model}/generate_stream", *direct),
                "gateway": (f"{gateway}/v1/chat/completions", json.dumps(chat).encode(), {}),
            }
            for url, payload, headers in targets.values():  # connections open, code paths warm
                http_figures(url, payload, headers, 2, 1)
            medians, _ = alternate(
                {name: _side(*target, seconds) for name, target in targets.items()}, rounds, "gateway hop"
            )
        finally:
            child.terminate()
            child.join(10)
    return {**medians, "rounds": rounds, "seconds_per_run": seconds}


def _side(url: str, body: bytes, headers: dict[str, str], seconds: float) -> Any:
    def run() -> dict[str, float]:
        c1 = http_figures(url, body, headers, 1, seconds)
        c8 = http_figures(url, body, headers, 8, seconds)
        return {"p50_ms": c1["p50_ms"], "p99_ms": c1["p99_ms"], "rps_c1": c1["rps"], "rps_c8": c8["rps"],
                "failed": c1["failed"] + c8["failed"]}  # fmt: skip

    return run
