#!/usr/bin/env bash
# ncf presets beside implicit's ALS and BPR (benfred/implicit, CPU) on the same train/test files,
# full ranking with training items masked, binary relevance (Recall@K = hits / held-out items,
# NDCG@K with the ideal DCG over min(K, held-out) items; ncf computes its own, the peer scripts
# theirs, with the same definitions):
#   (a) Gowalla's training file, 20% held out per user at random (a validation split: the real
#       test half stays unseen), K = 20, configs/implicit-sparse.toml;
#   (b) ml-100k, the recommenders-team protocol (per-user 75/25), K = 10, the ml-100k-recommenders
#       presets;
#   (c) ml-latest-small, per user 80/20, K = 10, configs/implicit-sparse.toml at K = 10 and
#       configs/implicit-dense.toml (EASE).
# Prints one line per run with its wall time.
#
# usage: benches/quality_vs_implicit.sh [--out DIR] [--only gowalla|ml100k|mlls]   NCF=path/to/ncf
#        PY=python with implicit (e.g. a venv: pip install implicit scipy numpy)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d); only=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --only) only="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
if [ -z "${NCF:-}" ]; then
    cargo build --release -q -p ncf-trainer
    NCF="${CARGO_TARGET_DIR:-target}/release/ncf"
fi
PY="${PY:-python3}"
tools=../shared/tools
"$PY" -c "import implicit" 2>/dev/null || { echo "skip peers: $PY has no implicit (pip install implicit scipy numpy)" >&2; PY=""; }
# implicit's own advice: one OpenBLAS thread beside its OpenMP pool.
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
mkdir -p "$out"

# ncf: train with a preset (and `--set`s), report test metrics at the epoch the run chose.
ncf_run() { # name preset K [args...]
    local name=$1 preset=$2 k=$3; shift 3
    local t0; t0=$(date +%s.%N)
    "$NCF" train --backend flex --config "$preset" --out "$out/$name" --force --set train.k="$k" "$@" \
        > "$out/$name.log" 2>&1 || { cat "$out/$name.log" >&2; exit 1; }
    local t1; t1=$(date +%s.%N)
    # The epoch in best/, from the run's last line ("best: epoch N ..." or "best: the last epoch, N: ...").
    local epoch; epoch=$(grep -oE '^best: (epoch|the last epoch,) [0-9]+' "$out/$name.log" | grep -oE '[0-9]+$')
    awk -F, -v e="$epoch" -v k="$k" -v n="$name" -v s="$(echo "$t1 - $t0" | bc)" 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
        $1 == e { printf "%s: Recall@%s %.4f NDCG@%s %.4f (epoch %s, selected on %s) wall %.0fs\n", n, k, $c["test_recall@" k], k, $c["test_full_ndcg@" k], e, $c["selected_on"], s }' \
        "$out/$name/metrics.csv"
}
peer() { # name script dir K factors iters env...
    local name=$1 script=$2 dir=$3 k=$4 f=$5 it=$6; shift 6
    [ -n "$PY" ] || return 0
    local t0; t0=$(date +%s.%N)
    local line; line=$(env "$@" "$PY" "$tools/$script" "$dir/train.csv" "$dir/test.csv" "$f" "$it" "$k" | grep '^implicit')
    echo "$name: $line wall $(echo "$(date +%s.%N) - $t0" | bc | cut -d. -f1)s"
}
# The peers' files: `ncf data split` with the seed and ratio of the ncf run beside them, and no
# validation carved (the peers train on all of train.csv; an ncf run that chooses on validation
# carves it from the same training rows, leaving the test rows identical).
split() { # dir data [--set ...]
    local dir=$1 data=$2; shift 2
    [ -f "$dir/test.csv" ] || "$NCF" data split "$data" --out "$dir" --set split.method=random --set train.select_on=last "$@" > /dev/null
}

if [ -z "$only" ] || [ "$only" = gowalla ]; then
    data=../shared/data/gowalla/train.csv
    if [ -f "$data" ]; then
        split "$out/gowalla-split" "$data" --set split.test_ratio=0.2
        ncf_run gowalla-ncf-implicit-sparse configs/implicit-sparse.toml 20 --set split.method=given \
            --set split.train_path="$out/gowalla-split/train.csv" --set split.test_path="$out/gowalla-split/test.csv"
        for a in 10 20 40; do for f in 64 128; do
            peer "gowalla-ALS-F$f-a$a" implicit_als.py "$out/gowalla-split" 20 "$f" 15 ALPHA=$a
        done; done
        peer gowalla-BPR-F64 implicit_bpr.py "$out/gowalla-split" 20 64 100
    else echo "skip gowalla: $data not found" >&2; fi
fi
if [ -z "$only" ] || [ "$only" = ml100k ]; then
    data=../shared/data/ml-100k/u.data
    if [ -f "$data" ]; then
        split "$out/ml100k-split" "$data" --set split.test_ratio=0.25
        for m in softmax bpr ease; do
            ncf_run "ml100k-ncf-recommenders-$m" "configs/ml-100k-recommenders-$m.toml" 10
        done
        peer ml100k-ALS-F64-a1 implicit_als.py "$out/ml100k-split" 10 64 15 ALPHA=1
        peer ml100k-BPR-F200 implicit_bpr.py "$out/ml100k-split" 10 200 100
    else echo "skip ml100k: $data not found" >&2; fi
fi
if [ -z "$only" ] || [ "$only" = mlls ]; then
    data=../shared/data/ml-latest-small/ratings.csv
    if [ -f "$data" ]; then
        split "$out/mlls-split" "$data" --set split.test_ratio=0.2
        ncf_run mlls-ncf-implicit-sparse configs/implicit-sparse.toml 10 --data "$data"
        ncf_run mlls-ncf-implicit-dense configs/implicit-dense.toml 10 --data "$data"
        peer mlls-ALS-F64-a1 implicit_als.py "$out/mlls-split" 10 64 15 ALPHA=1
        peer mlls-BPR-F200 implicit_bpr.py "$out/mlls-split" 10 200 100
    else echo "skip mlls: $data not found" >&2; fi
fi
