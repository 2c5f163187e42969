"""Benchmark the served tiny model: single-request latency, and throughput with and without batching.

One Triton serves the same checkpoint twice: once with the dynamic batcher and once without. Phases
alternate in rounds so that load from elsewhere on a small machine hits both alike. The last output
line is one JSON object (``p50_ms``, ``p99_ms``, ``rps_c1``, ``rps_c8_batched``, ``rps_c8_unbatched``,
``batching_gain``) for ``make bench-triton`` and CI to read.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.contract import PackageParams
from serving.triton.client import TritonChatClient, user_message
from serving.triton.launcher import TritonServer, free_ports
from serving.triton.packaging import package
from serving.triton.settings import TritonSettings
from tiny_model import shapes

# Two builds of one checkpoint, served side by side as their own Triton models.
BATCHED, UNBATCHED = "qwen3-vl-batched-v1", "qwen3-vl-unbatched-v1"
# Questions from the held-out stream (seed 0 is training), varied so no two requests are the same.
_SEED = 7
_SAMPLES = 16


def _params(batched: bool, concurrency: int, queue_delay_us: int) -> PackageParams:
    return PackageParams(
        version=1,
        max_batch_size=concurrency,
        dynamic_batching=batched,
        preferred_batch_sizes=[concurrency] if batched else [],
        max_queue_delay_us=queue_delay_us,
        instance_count=1,
        instance_kind="cpu",
        max_queue_size=256,
        queue_timeout_us=60_000_000,
        compute_dtype="float32",
        max_new_tokens=8,
        temperature=0.0,
        top_p=1.0,
        max_history=2,
        max_images=4,
        max_image_pixels=1 << 22,
        max_prompt_tokens=4096,
    )


def conversations() -> list[list[dict[str, Any]]]:
    """Held-out questions with their images, varied so no two consecutive requests are the same."""
    samples = [shapes.sample(_SEED, index) for index in range(_SAMPLES)]
    return [[user_message(sample.question, [sample.image])] for sample in samples]


def closed_loop(
    client: TritonChatClient, asked: list[list[dict[str, Any]]], concurrency: int, seconds: float
) -> tuple[int, float]:
    """Requests completed by ``concurrency`` closed-loop clients in about ``seconds``, and the time taken."""
    counts = [0] * concurrency
    errors: list[BaseException] = []
    deadline = time.perf_counter() + seconds

    def worker(slot: int) -> None:
        try:
            while time.perf_counter() < deadline:
                client.chat(asked[(slot + counts[slot] * concurrency) % len(asked)])
                counts[slot] += 1
        except BaseException as exc:  # surfaced below; a silent thread would fake a low rate
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


def run(
    checkpoint: Path,
    workdir: Path,
    *,
    requests: int,
    seconds: float,
    rounds: int,
    concurrency: int,
    queue_delay_us: int,
) -> dict[str, float]:
    """Package, serve and measure; returns the summary figures."""
    repository = workdir / "repository"
    backend = Path(__file__).resolve().parents[1] / "backend" / "model.py"
    for name, batched in ((BATCHED, True), (UNBATCHED, False)):
        package(
            checkpoint, backend, repository, name.removesuffix("-v1"), _params(batched, concurrency, queue_delay_us)
        )
    http, grpc, metrics = free_ports(3)
    settings = TritonSettings(http_port=http, grpc_port=grpc, metrics_port=metrics, exit_timeout_secs=1)
    with TritonServer(repository, settings, run_dir=workdir / "run", load_models=[BATCHED, UNBATCHED]) as server:
        clients = {
            name: TritonChatClient(server.grpc_url, name, protocol="grpc", timeout_s=60)
            for name in (BATCHED, UNBATCHED)
        }
        try:
            asked = conversations()
            for client in clients.values():
                for conversation in asked[:4]:
                    client.chat(conversation)
            # Single requests go to the model without a batcher: a queue delay is not their latency.
            latencies = [clients[UNBATCHED].chat(asked[i % len(asked)]).latency_s for i in range(requests)]
            batches_before = _batch_counts(server, BATCHED)
            totals = {"c1": [0, 0.0], "c8_batched": [0, 0.0], "c8_unbatched": [0, 0.0]}
            for round_number in range(1, rounds + 1):
                for key, client, clients_now in (
                    ("c1", clients[UNBATCHED], 1),
                    ("c8_batched", clients[BATCHED], concurrency),
                    ("c8_unbatched", clients[UNBATCHED], concurrency),
                ):
                    done, took = closed_loop(client, asked, clients_now, seconds)
                    totals[key][0] += done
                    totals[key][1] += took
                    _say(f"round {round_number} {key}: {done / took:.1f} req/s")
            batches_after = _batch_counts(server, BATCHED)
        finally:
            for client in clients.values():
                client.close()
    rates = {key: count / elapsed for key, (count, elapsed) in totals.items()}
    cuts = statistics.quantiles([latency * 1000 for latency in latencies], n=100)
    inferences, executions = (after - before for after, before in zip(batches_after, batches_before, strict=True))
    return {
        "p50_ms": round(statistics.median(latency * 1000 for latency in latencies), 2),
        "p99_ms": round(cuts[98], 2),
        "rps_c1": round(rates["c1"], 1),
        "rps_c8_batched": round(rates["c8_batched"], 1),
        "rps_c8_unbatched": round(rates["c8_unbatched"], 1),
        "batching_gain": round(rates["c8_batched"] / rates["c1"], 2),
        "mean_batch_c8": round(inferences / max(executions, 1), 2),
        "queue_delay_us": queue_delay_us,
    }


def _batch_counts(server: TritonServer, model: str) -> tuple[int, int]:
    """Triton's (inference_count, execution_count) for ``model``: their ratio is the mean batch size."""
    import tritonclient.http as triton_http

    admin = triton_http.InferenceServerClient(server.http_url.removeprefix("http://"))
    try:
        (stats,) = admin.get_inference_statistics(model)["model_stats"]
    finally:
        admin.close()
    return int(stats["inference_count"]), int(stats["execution_count"])


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m serving.triton.bench --checkpoint DIR``; the last line is the JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--checkpoint", type=Path, required=True, help="HF checkpoint folder to serve")
    parser.add_argument("--requests", type=int, default=200, help="sequential requests timed for p50/p99")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one throughput phase")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of alternating throughput phases")
    parser.add_argument("--concurrency", type=int, default=8, help="clients in the concurrent phases")
    # Long enough for a closed-loop client to send again, so all eight requests share one batch.
    parser.add_argument("--queue-delay-us", type=int, default=6000, help="dynamic batcher's max queue delay")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="bench-triton-") as workdir:
        summary = run(
            args.checkpoint,
            Path(workdir),
            requests=args.requests,
            seconds=args.seconds,
            rounds=args.rounds,
            concurrency=args.concurrency,
            queue_delay_us=args.queue_delay_us,
        )
    _say(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
