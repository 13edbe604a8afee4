#!/usr/bin/env bash
# Reproduces BENCHMARKS.md's ml-100k quality table: the NCF paper protocol (leave-one-out, test
# item among 100 sampled negatives, HR@10 / NDCG@10 at the best test-HR epoch, as the paper and the
# PyTorch reference report: train.select_on = "test", no validation split), factor 8, 20 epochs,
# each preset in configs/, over several seeds.
#
# usage: benches/quality_ml100k.sh [--seeds "1 2 3"] [--epochs 20] [--torch] [--out DIR]
#   NCF=path/to/ncf (default: cargo build --release, then target/release/ncf)
#   --torch also runs ../shared/tools/torch_ncf_ref.py (PYTHON=python with torch) on the same file.
# Prints a markdown table: mean and (min–max) over seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="1 2 3"; epochs=20; torch=0; out=$(mktemp -d)
while [ $# -gt 0 ]; do
    case "$1" in
        --seeds) seeds="$2"; shift 2 ;;
        --epochs) epochs="$2"; shift 2 ;;
        --torch) torch=1; shift ;;
        --out) out="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
data=../shared/data/ml-100k/u.data
[ -f "$data" ] || { echo "skip: $data not found (MovieLens 100K is not redistributed)" >&2; exit 0; }
if [ -z "${NCF:-}" ]; then
    cargo build --release -q -p ncf-trainer
    NCF="${CARGO_TARGET_DIR:-target}/release/ncf"
fi
mkdir -p "$out"

# The best test-HR epoch's "hr ndcg" from a run's metrics.csv (first of equals), columns by name.
best() {
    awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
             $c["test_hr@10"] != "" && $c["test_hr@10"] > hr { hr = $c["test_hr@10"]; nd = $c["test_ndcg@10"] }
             END { printf "%s %s\n", hr, nd }' "$1/metrics.csv"
}
train() { # name seed extra-args...
    local name=$1 seed=$2; shift 2
    "$NCF" train --backend flex --seed "$seed" --epochs "$epochs" --set train.full_ranking=false --set train.select_on=test \
        --out "$out/$name-$seed" "$@" > "$out/$name-$seed.log" 2>&1 || { cat "$out/$name-$seed.log" >&2; exit 1; }
    echo "$name $seed $(best "$out/$name-$seed")" >> "$out/results.txt"
    echo "$name seed $seed: $(best "$out/$name-$seed")" >&2
}
: > "$out/results.txt"
for seed in $seeds; do
    for m in gmf mlp neumf mf; do train "$m" "$seed" --config "configs/ml-100k-$m.toml"; done
    train neumf-pretrained "$seed" --config configs/ml-100k-neumf-pretrained.toml \
        --set "pretrain.gmf=\"$out/gmf-$seed\"" --set "pretrain.mlp=\"$out/mlp-$seed\""
done
if [ "$torch" = 1 ]; then
    for m in gmf mlp neumf mf; do
        line=$("${PYTHON:-python3}" ../shared/tools/torch_ncf_ref.py "$data" "$m" "$epochs" | tail -1)
        echo "torch-$m 0 $(echo "$line" | awk '{print $5, $7}')" >> "$out/results.txt"
        echo "torch $m: $line" >&2
    done
fi
echo
echo "| model | HR@10 | NDCG@10 | seeds |"
echo "|---|---|---|---|"
awk '{ n[$1]++; h[$1] += $3; d[$1] += $4
       if (!($1 in hmin) || $3 < hmin[$1]) hmin[$1] = $3; if ($3 > hmax[$1]) hmax[$1] = $3
       if (!($1 in dmin) || $4 < dmin[$1]) dmin[$1] = $4; if ($4 > dmax[$1]) dmax[$1] = $4
       if (!($1 in order)) { order[$1] = ++k; name[k] = $1 } }
     END { for (i = 1; i <= k; i++) { m = name[i]
         printf "| %s | %.4f (%.4f–%.4f) | %.4f (%.4f–%.4f) | %d |\n", m, h[m]/n[m], hmin[m], hmax[m], d[m]/n[m], dmin[m], dmax[m], n[m] } }' "$out/results.txt"
echo
echo "runs in $out"
