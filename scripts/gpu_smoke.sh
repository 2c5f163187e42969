#!/usr/bin/env bash
# Prove the GPU path on one NVIDIA GPU, in about 10 minutes: the pipeline on CUDA (bitsandbytes nf4),
# the packaged model served by Triton on the GPU (KIND_GPU), and what it costs (GPU memory, latency,
# throughput at concurrency 1 and 8).
#
#   scripts/gpu_smoke.sh                                     # a GPU-size Qwen3-VL with random weights
#   QWEN3_VL_CHECKPOINT=/models/Qwen3-VL-8B-Instruct scripts/gpu_smoke.sh   # a real checkpoint
#
# Without QWEN3_VL_CHECKPOINT it builds a Qwen3-VL of about 0.4 B parameters with the tiny model's
# builder (tiny_model/build.py) and random weights: a smoke test of memory, quantization, batching and
# throughput, not of answers. Everything runs in a temporary copy of the repository (tracked and
# untracked, not ignored, files), with its own params.yaml, DVC cache and Triton; your params.yaml,
# artifacts and MLflow store are never touched.
#
# Environment: QWEN3_VL_CHECKPOINT (a Qwen3-VL checkpoint folder), VENV (default: .venv of this
# repository), GPU_SMOKE_BUDGET_S (default 600: fail when slower), KEEP_WORKDIR=1 (keep the copy).
# Exits non-zero, naming the step, on any failure.
set -euo pipefail

# No external command runs before the GPU check: on a machine without one, this script only refuses.
script_dir="${BASH_SOURCE[0]%/*}"
[[ "$script_dir" == "${BASH_SOURCE[0]}" ]] && script_dir=.
ROOT="$(cd "$script_dir/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
BUDGET_S="${GPU_SMOKE_BUDGET_S:-600}"

say() { printf '==> %s\n' "$*"; }
die() {
    printf 'gpu_smoke: %s\n' "$*" >&2
    exit 1
}

# -- 1. a GPU, or refuse -----------------------------------------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1; then
    die "no NVIDIA GPU: nvidia-smi is not on PATH. This script proves the GPU path and needs one NVIDIA GPU with its driver; on a CPU-only machine run 'make demo' and 'make bench-triton' instead."
fi
if ! gpus="$(nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader 2>&1)" || [[ -z "$gpus" ]]; then
    die "nvidia-smi found no usable NVIDIA GPU (is the driver loaded?): ${gpus:-no output}"
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    die "no project environment at $VENV: run 'make install' first (or set VENV)"
fi
if ! "$VENV/bin/python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    die "torch in $VENV cannot use the GPU (torch.cuda.is_available() is False): install a CUDA build of the pinned torch"
fi
if [[ -n "${QWEN3_VL_CHECKPOINT:-}" && ! -f "$QWEN3_VL_CHECKPOINT/config.json" ]]; then
    die "QWEN3_VL_CHECKPOINT=$QWEN3_VL_CHECKPOINT is not a checkpoint folder (no config.json)"
fi
say "GPU: ${gpus//$'\n'/; }"

started=$SECONDS
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu-smoke.XXXXXX")"
LOGS="$WORK/logs"
mkdir -p "$LOGS" "$WORK/repo"
finish() {
    local status=$?
    if [[ $status -eq 0 && "${KEEP_WORKDIR:-0}" != 1 ]]; then
        rm -rf "$WORK"
    else
        printf 'gpu_smoke: the work folder is kept: %s (logs in %s)\n' "$WORK" "$LOGS" >&2
    fi
}
trap finish EXIT
step() {
    # step NAME COMMAND...: run with its output in logs/NAME.log; on failure show its tail and stop.
    local name=$1
    shift
    say "$name"
    if ! "$@" >"$LOGS/$name.log" 2>&1; then
        tail -n 40 "$LOGS/$name.log" >&2
        die "step '$name' failed after $((SECONDS - started)) s; full log: $LOGS/$name.log"
    fi
}

export PATH="$VENV/bin:$PATH" PYTHONPATH="$WORK/repo" HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"

# -- 2. a copy of the repository -----------------------------------------------------------------------
copy_repo() {
    git -C "$ROOT" ls-files -z --cached --others --exclude-standard \
        | tar -C "$ROOT" --null --ignore-failed-read -T - -cf - \
        | tar -C "$WORK/repo" -xf -
    # A copy without git history: DVC runs without an SCM there (config.local: the copy's own, untracked).
    printf '[core]\n    no_scm = true\n' >"$WORK/repo/.dvc/config.local"
}
step copy copy_repo

# -- 3. the checkpoint ----------------------------------------------------------------------------------
if [[ -n "${QWEN3_VL_CHECKPOINT:-}" ]]; then
    CHECKPOINT="$(cd "$QWEN3_VL_CHECKPOINT" && pwd)"
    say "checkpoint: $CHECKPOINT"
else
    CHECKPOINT="$WORK/repo/gpu-checkpoint"
    step checkpoint python "$WORK/repo/scripts/gpu_smoke.py" checkpoint "$CHECKPOINT"
    say "$(tail -n 1 "$LOGS/checkpoint.log")"
fi

# -- 4. the pipeline on CUDA, up to a packaged Triton model ----------------------------------------------
set_params() {
    python - "$WORK/repo/params.yaml" "$CHECKPOINT" <<'EOF'
import sys
from pathlib import Path

import yaml

path, checkpoint = Path(sys.argv[1]), sys.argv[2]
params = yaml.safe_load(path.read_text())
params["model"].update(source=checkpoint, device="cuda")
params["quantize"]["method"] = "bnb-nf4"
params["package"].update(instance_kind="gpu", compute_dtype="auto")
path.write_text(yaml.safe_dump(params, sort_keys=False))
EOF
}
step params set_params
# The accuracy gate (validate) is left out: random weights answer nothing right. With a real
# checkpoint and golden set, run `dvc repro` in your own repository for the gate.
run_pipeline() { (cd "$WORK/repo" && dvc repro package); }
step pipeline run_pipeline
MODEL="$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["triton_model"])' "$WORK/repo/metrics/package.json")"
python - "$WORK/repo/metrics" <<'EOF'
import json, sys
from pathlib import Path

folder = Path(sys.argv[1])
base, quantized = (json.loads((folder / name).read_text()) for name in ("base_model.json", "quantize.json"))
print(f"==> weights: {base.get('weights_bytes', 0) / 2**30:.2f} GiB, nf4: {quantized.get('weights_bytes', 0) / 2**30:.2f} GiB")
EOF
grep -q "KIND_GPU" "$WORK/repo/triton-models/$MODEL/config.pbtxt" || die "$MODEL's config.pbtxt has no KIND_GPU instance group"

# -- 5. served by Triton on the GPU, measured -----------------------------------------------------------------
step bench python "$WORK/repo/scripts/gpu_smoke.py" bench "$WORK/repo/triton-models" "$MODEL" --run-dir "$WORK/triton"
figures="$(tail -n 1 "$LOGS/bench.log")"
python - "$figures" <<'EOF'
import json, sys

f = json.loads(sys.argv[1])
print(f"==> {f['model']} on the GPU: p50 {f['p50_ms']} ms, p99 {f['p99_ms']} ms; "
      f"{f['rps_c1']} req/s at concurrency 1, {f['rps_c8']} req/s at 8")
print(f"==> GPU memory (MiB per GPU): idle {f['gpu_mib_idle']}, model loaded {f['gpu_mib_loaded']}, "
      f"after concurrency 8 {f['gpu_mib_after_c8']}; {f['instances']} instances per GPU, "
      f"{f['gpu_mib_per_instance']} each")
EOF
nvidia-smi --query-gpu=index,name,memory.used,memory.total,utilization.gpu --format=csv

elapsed=$((SECONDS - started))
if ((elapsed > BUDGET_S)); then
    die "the GPU path works but took ${elapsed} s, over the ${BUDGET_S} s budget (GPU_SMOKE_BUDGET_S)"
fi
say "GPU path OK in ${elapsed} s"
printf '%s\n' "$figures"
