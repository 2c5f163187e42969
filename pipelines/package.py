"""DVC stage ``package``: turn the quantized checkpoint into one complete Triton model.

Writes ``<repository>/<model>-v<version>/`` (see ``serving.triton.packaging``) and a metrics file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from core.contract import PackageParams
from core.files import write_json
from core.params import RegistryParams, load_group
from core.stage import run_stage
from serving.triton.packaging import package


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.package", description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder to package")
    parser.add_argument("--backend", type=Path, required=True, help="the Python-backend model.py to ship")
    parser.add_argument("--repository", type=Path, required=True, help="Triton model repository root")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    args = parser.parse_args(argv)

    def body() -> str:
        model = load_group("registry", RegistryParams, args.params).model_name
        params = load_group("package", PackageParams, args.params)
        result = package(args.checkpoint, args.backend, args.repository, model, params)
        write_json(args.metrics, result.model_dump())
        folder = args.repository / result.triton_model
        return f"{result.triton_model}: {result.files} files, {result.bytes:,} bytes -> {folder}"

    return run_stage("package", body)


if __name__ == "__main__":
    raise SystemExit(main())
