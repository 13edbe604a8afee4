#!/usr/bin/env bash
# ncf vs PyTorch, CPU training, in one go: NeuMF factor 8, MLP [64,32,16,8], BCE, Adam, same batch.
#   1. ML-1M catalogue (6040 x 3706) at batch 256 and 4096: ncf/PyTorch throughput ratio.
#   2. Catalogue growth at batch 4096: 10k vs 1M items, per-step time ratio for ncf and for PyTorch,
#      in one `ncf bench --items 10000,1000000`: the two catalogues' repetitions (and the peer's
#      runs) take turns, so the ratio compares figures taken under the same machine load.
# ncf runs its default row-sparse (lazy) Adam on the tables, PyTorch dense torch.optim.Adam; the
# peer draws uniform random batches, ncf batches from a synthetic epoch (4 negatives per positive).
# The peer runs once before each of ncf's timed repetitions (interleaved), so that both sides meet
# the same machine load as it drifts; each figure is the median of REPS runs.
#
# usage: benches/train_vs_torch.sh [OUT_DIR]        (default runs/train-vs-torch)
# env:   NCF     prebuilt binary (default $CARGO_TARGET_DIR/release/ncf, else target/release/ncf)
#        PYTHON  python with torch (default /root/venv-torch/bin/python)
#        PEER    the peer script (default ../shared/tools/torch_neumf_step.py beside the repo)
#        REPS    repetitions per figure (default 9: a 16-step repetition right after a peer run
#                measured anywhere from 1.9 to 3.5 ms/step here, and medians of 5 still moved
#                the growth ratio by ±0.15 from run to run)
#        TORCH_THREADS  OMP_NUM_THREADS for the peer (default: torch's own choice). On a loaded
#                machine torch's spinning OpenMP threads can be many times slower than one thread:
#                measure both and quote the faster peer.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
NCF=${NCF:-${CARGO_TARGET_DIR:-$root/target}/release/ncf}
PYTHON=${PYTHON:-/root/venv-torch/bin/python}
PEER=${PEER:-$root/../shared/tools/torch_neumf_step.py}
REPS=${REPS:-9}
threads=()
[ -n "${TORCH_THREADS:-}" ] && threads=(--torch-threads "$TORCH_THREADS")
OUT=${1:-$root/runs/train-vs-torch}
[ -x "$NCF" ] || { echo "error: no ncf binary at $NCF (cargo build --release -p ncf-trainer, or set NCF)" >&2; exit 1; }
[ -f "$PEER" ] || { echo "error: peer script $PEER not found (set PEER)" >&2; exit 1; }
"$PYTHON" -c 'import torch' 2>/dev/null || { echo "error: $PYTHON cannot import torch (set PYTHON)" >&2; exit 1; }
mkdir -p "$OUT"
log="$OUT/log.txt"
: > "$log"

bench() { # OUT_SUBDIR ARGS...
    local dir=$1; shift
    "$NCF" bench --backends flex --models neumf --only train --reps "$REPS" \
        --torch-peer "$PEER" --python "$PYTHON" --torch-device cpu "${threads[@]}" --out "$OUT/$dir" "$@" | tee -a "$log"
}

echo "== ML-1M catalogue, batch 256 and 4096 =="
bench ml-1m --workload ml-1m --batch 256,4096
echo "== catalogue growth, batch 4096: 10k and 1M items, interleaved =="
bench growth --workload ml-1m --users 6040 --items 10000,1000000 --batch 4096

# vs-torch BACKEND/DEVICE MODEL batch B users U items I: ncf X ms/step R samples/s, torch Y ms/step S samples/s, ratio Q
echo
echo "== summary (same-run medians; this machine may be shared, so quote ratios, not times) =="
grep '^vs-torch flex' "$log" | awk '{ sub(":", "", $9); printf "batch %-5s items %-8s ncf %9.3f ms/step  torch %9.3f ms/step  ncf/torch throughput %.2fx\n", $5, $9, $11, $16, $21 }'
# growth flex neumf batch B items I0 -> I1: ncf per-step time xR (X -> Y ms/step), torch-cpu xR (X -> Y ms/step)
grep '^growth flex' "$log" | awk '{ sub(":", "", $9); printf "catalogue growth %s -> %s items (batch %s): per-step time %s for ncf (row-sparse Adam), %s for PyTorch (dense Adam)\n", $7, $9, $5, $13, $19 }'
