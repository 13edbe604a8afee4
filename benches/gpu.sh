#!/usr/bin/env bash
# The GPU suite in one command, building nothing: a prebuilt ncf on wgpu and cuda, and the PyTorch
# peer on cuda, for NeuMF at batch 256, 4096 and 1M in the NVIDIA DeepLearningExamples ml-20m
# setting (factor 64, MLP [256,256,128,64], Adam), recommend top-10 for all users of that model, and
# the paper's factor-8 NeuMF at the same batches beside the peer (torch_neumf_step.py runs only that
# shape, so the ncf/PyTorch ratios are for factor 8; the factor-64 figures have no peer).
# Writes one table (stdout) and OUT/bench.json (+ bench.png) with the ratios.
#
# usage: benches/gpu.sh [--small] [NCF_BINARY] [OUT_DIR]
#   --small    the CI smoke run: small workload, one repetition, peer on the CPU where torch exists
#   NCF_BINARY default $NCF, else $CARGO_TARGET_DIR/release/ncf, else target/release/ncf
#   OUT_DIR    default runs/bench-gpu (runs/bench-gpu-small with --small)
# env: PYTHON (python with torch; default python3, or /root/venv-torch/bin/python where python3 has
#      none), PEER (default ../shared/tools/torch_neumf_step.py beside the repo)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
small=0
if [ "${1:-}" = "--small" ]; then small=1; shift; fi
NCF=${1:-${NCF:-${CARGO_TARGET_DIR:-$root/target}/release/ncf}}
OUT=${2:-$root/runs/bench-gpu$([ $small = 1 ] && echo -small)}
PEER=${PEER:-$root/../shared/tools/torch_neumf_step.py}
[ -x "$NCF" ] || { echo "error: no ncf binary at $NCF (build it elsewhere and pass its path)" >&2; exit 1; }

has_torch() { "$1" -c 'import torch' >/dev/null 2>&1; }
if [ -z "${PYTHON:-}" ]; then
    for p in python3 /root/venv-torch/bin/python; do
        if command -v "$p" >/dev/null 2>&1 && has_torch "$p"; then PYTHON=$p; break; fi
    done
fi

args=(bench --suite gpu --backends wgpu,cuda --out "$OUT")
if [ $small = 1 ]; then
    args+=(--workload small --reps 1)
    device=cpu
else
    device=cuda
fi
if [ -n "${PYTHON:-}" ] && [ -f "$PEER" ] && has_torch "$PYTHON"; then
    if [ $device = cuda ] && ! "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        echo "gpu.sh: torch has no CUDA device here; the peer runs on the CPU" >&2
        device=cpu
    fi
    args+=(--torch-peer "$PEER" --python "$PYTHON" --torch-device "$device")
else
    echo "gpu.sh: no PyTorch peer (no python with torch, or $PEER missing): ncf figures only" >&2
fi
echo "+ $NCF ${args[*]}" >&2
exec "$NCF" "${args[@]}"
