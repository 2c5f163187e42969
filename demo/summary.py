"""Print the pipeline's headline figures from ``metrics/*.json`` as one table (``make demo``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from core.wording import describe_drop

# (stage, metric key, label, format)
ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("base_model", "source", "model source", "{}"),
    ("base_model", "parameters", "parameters", "{:,}"),
    ("base_model", "golden_accuracy", "base golden accuracy", "{:.1%}"),
    ("base_model", "weights_bytes", "base weights (bytes)", "{:,}"),
    ("quantize", "method", "quantization", "{}"),
    ("quantize", "weights_bytes", "quantized weights (bytes)", "{:,}"),
    ("quantize", "size_ratio", "size ratio", "{:.1%}"),
    ("quantize", "golden_accuracy", "quantized golden accuracy (reloaded)", "{:.1%}"),
    ("quantize-report", "seconds", "quantize seconds", "{:.1f}"),
    ("package", "triton_model", "Triton model (build)", "{}"),
    ("package", "bytes", "version folder (bytes)", "{:,}"),
    ("validate", "accuracy", "served golden accuracy (Triton)", "{:.1%}"),
    ("validate-report", "p50_ms", "served p50 latency (ms)", "{:.1f}"),
    ("validate-report", "p95_ms", "served p95 latency (ms)", "{:.1f}"),
    ("validate", "passed", "validation gate passed", "{}"),
    ("register", "registered_model", "MLflow registered model", "{}"),
    ("register", "version", "MLflow model version", "{}"),
    ("register", "alias", "MLflow alias", "{}"),
)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def summarize(metrics_dir: Path, reports_dir: Path, register_file: Path) -> list[tuple[str, str]]:
    """(label, value) pairs for every figure present; missing stages are skipped."""
    loaded = {path.stem: _read(path) for path in sorted(metrics_dir.glob("*.json"))}
    loaded["quantize-report"] = _read(reports_dir / "quantize.json")
    loaded["validate-report"] = _read(reports_dir / "validate" / "latency.json")
    loaded["register"] = _read(register_file)
    rows = []
    for stage, key, label, fmt in ROWS:
        if key in loaded.get(stage, {}):
            rows.append((label, fmt.format(loaded[stage][key])))
    base, quant = loaded.get("base_model", {}), loaded.get("quantize", {})
    if "golden_accuracy" in base and "golden_accuracy" in quant:
        drop = base["golden_accuracy"] - quant["golden_accuracy"]
        rows.append(("accuracy change from quantization", describe_drop(drop)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.summary", description=__doc__)
    parser.add_argument("--metrics", type=Path, default=Path("metrics"))
    parser.add_argument("--reports", type=Path, default=Path("reports"))
    parser.add_argument("--register", type=Path, default=Path("artifacts/register.json"))
    args = parser.parse_args(argv)
    rows = summarize(args.metrics, args.reports, args.register)
    if not rows:
        sys.stderr.write(f"summary: no metrics under {args.metrics}; run `dvc repro` first\n")
        return 1
    width = max(len(label) for label, _ in rows)
    sys.stdout.write("\n" + "-" * (width + 24) + "\n")
    for label, value in rows:
        sys.stdout.write(f"{label:<{width}}  {value}\n")
    sys.stdout.write("-" * (width + 24) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
