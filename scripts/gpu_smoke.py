"""The Python half of scripts/gpu_smoke.sh: a GPU-size Qwen3-VL checkpoint, and a GPU benchmark of a packaged model.

``checkpoint OUT``: the tiny model's own builder (tokenizer, processor, architecture) with towers about
400x larger (about 0.4 B parameters, bf16). Its weights are random: it exercises memory, quantization,
batching and throughput on a GPU, never accuracy.

``bench REPOSITORY MODEL``: serve one packaged model (KIND_GPU) in the project's Triton and measure it
with the benchmark harness's closed loop (bench/load.py): median and p99 latency of single requests, throughput of
closed-loop clients at concurrency 1 and 8, and GPU memory in use (nvidia-smi) while loaded. The last
line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

#: Text tower and vision tower sizes: large enough for a GPU to be the bottleneck, small enough to
#: build on a CPU in under a minute. Qwen3-VL-8B has hidden 4096 and 36 layers.
GPU_TEXT = {
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "num_hidden_layers": 8,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
}
GPU_MROPE_SECTION = [24, 20, 20]  # sums to head_dim / 2
GPU_VISION = {"depth": 4, "hidden_size": 512, "intermediate_size": 1536, "num_heads": 8}


def gpu_config(tokenizer: Any) -> Any:
    """The tiny model's Qwen3VLConfig with the GPU-size towers."""
    from tiny_model import build

    config = build.build_config(tokenizer)
    text: Any = config.text_config
    vision: Any = config.vision_config
    for key, value in GPU_TEXT.items():
        setattr(text, key, value)
    text.rope_parameters = {**text.rope_parameters, "mrope_section": GPU_MROPE_SECTION}
    for key, value in GPU_VISION.items():
        setattr(vision, key, value)
    vision.out_hidden_size = GPU_TEXT["hidden_size"]
    return config


def build_checkpoint(out: Path, seed: int) -> int:
    """Write a random-weight Qwen3-VL checkpoint of GPU size to ``out``; return its parameter count."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    from core.files import atomic_dir
    from tiny_model import build

    tokenizer = build.build_tokenizer()
    processor = build.build_processor(tokenizer)
    config = gpu_config(tokenizer)
    torch.manual_seed(seed)
    model: Any = Qwen3VLForConditionalGeneration(config)
    model = model.to(torch.bfloat16)
    # The tiny model's generation settings (greedy, the right stop and pad tokens).
    model.generation_config = build.build_model(tokenizer, seed).generation_config
    with atomic_dir(out) as tmp:
        processor.save_pretrained(tmp)
        model.save_pretrained(tmp)
    return sum(p.numel() for p in model.parameters())


def gpu_memory_mib() -> list[int]:
    """Memory in use on each GPU, MiB (nvidia-smi)."""
    result = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    )
    return [int(line) for line in result.stdout.split()]


def bench(repository: Path, model: str, *, requests: int, seconds: float, run_dir: Path) -> dict[str, Any]:
    from bench.load import closed_loop, conversations
    from serving.triton.client import TritonChatClient
    from serving.triton.launcher import TritonServer, free_ports
    from serving.triton.settings import TritonSettings

    idle = gpu_memory_mib()
    http, grpc, metrics = free_ports(3)
    settings = TritonSettings(http_port=http, grpc_port=grpc, metrics_port=metrics, ready_timeout_s=600)
    with (
        TritonServer(repository, settings, run_dir=run_dir, load_models=[model]) as server,
        TritonChatClient(server.grpc_url, model, protocol="grpc", timeout_s=120) as client,
    ):
        loaded = gpu_memory_mib()
        asked = conversations()
        for conversation in asked[:4]:
            client.chat(conversation)
        latencies = [client.chat(asked[i % len(asked)]).latency_s * 1000 for i in range(requests)]
        done, took = closed_loop(client, asked, 1, seconds)
        rps_c1 = done / took
        done, took = closed_loop(client, asked, 8, seconds)
        rps_c8 = done / took
        under_load = gpu_memory_mib()
    from bench.triton import served_instances

    instances, _ = served_instances(repository / model)
    return {
        "model": model,
        # KIND_GPU's count is per GPU: each GPU holds this many copies of the model.
        "instances": instances,
        "gpu_mib_per_instance": [(after - before) // instances for before, after in zip(idle, loaded, strict=True)],
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(statistics.quantiles(latencies, n=100)[98], 2),
        "rps_c1": round(rps_c1, 1),
        "rps_c8": round(rps_c8, 1),
        "gpu_mib_idle": idle,
        "gpu_mib_loaded": loaded,
        "gpu_mib_after_c8": under_load,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("checkpoint", help="build the GPU-size random-weight checkpoint")
    make.add_argument("out", type=Path)
    make.add_argument("--seed", type=int, default=0)
    measure = sub.add_parser("bench", help="serve a packaged model on the GPU and measure it")
    measure.add_argument("repository", type=Path)
    measure.add_argument("model", help="the Triton model folder's name, e.g. qwen3-vl-v1")
    measure.add_argument("--requests", type=int, default=50)
    measure.add_argument("--seconds", type=float, default=10.0)
    measure.add_argument("--run-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "checkpoint":
        count = build_checkpoint(args.out, args.seed)
        sys.stdout.write(f"checkpoint: {args.out} ({count / 1e6:.0f} M parameters, random weights, bf16)\n")
        return 0
    figures = bench(args.repository, args.model, requests=args.requests, seconds=args.seconds, run_dir=args.run_dir)
    sys.stdout.write(json.dumps(figures) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
