#!/usr/bin/env bash
# ncf on the recommenders-team/recommenders ml-100k benchmark protocol: every rating an implicit
# positive, per-user random 75/25 split, top-10 over all items with training items removed, binary
# relevance. Reports the LAST epoch of each preset (fixed epochs, no selection on the test split),
# mean and (min–max) over seeds, beside the published rows of their table.
#
# usage: benches/recommenders_ml100k.sh [--seeds "1 2 3"] [--models "neumf bpr softmax ease"] [--out DIR]
#        NCF=path/to/ncf      (models: the configs/ml-100k-recommenders-*.toml presets)
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="1 2 3"; models="neumf bpr softmax ease"; out=$(mktemp -d)
while [ $# -gt 0 ]; do
    case "$1" in
        --seeds) seeds="$2"; shift 2 ;;
        --models) models="$2"; shift 2 ;;
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
mkdir -p "$out"; : > "$out/results.txt"
for seed in $seeds; do
    for m in $models; do
        run="$out/$m-$seed"
        # train.select_on = "last" keeps their 75/25 split (no validation split carved out of the
        # 75) and chooses nothing: the last epoch is reported, epochs fixed in the preset.
        "$NCF" train --backend flex --seed "$seed" --config "configs/ml-100k-recommenders-$m.toml" --set train.select_on=last \
            --out "$run" > "$run.log" 2>&1 || { cat "$run.log" >&2; exit 1; }
        # The last epoch's test full-ranking nDCG, precision, recall and MAP, columns by name.
        awk -F, -v m="$m" 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
            { r = m " " $c["test_full_ndcg@10"] " " $c["test_precision@10"] " " $c["test_recall@10"] " " $c["test_map@10"] }
            END { print r }' "$run/metrics.csv" >> "$out/results.txt"
        echo "$m seed $seed: $(tail -1 "$out/results.txt")" >&2
    done
done
echo
echo "| model | nDCG@10 | Precision@10 | Recall@10 | MAP@10 | seeds |"
echo "|---|---|---|---|---|---|"
awk '{ n[$1]++; for (j = 2; j <= 5; j++) { s[$1, j] += $j; if (n[$1] == 1 || $j < lo[$1, j]) lo[$1, j] = $j; if ($j > hi[$1, j]) hi[$1, j] = $j }
       if (n[$1] == 1) name[++k] = $1 }
     END { for (i = 1; i <= k; i++) { m = name[i]; label["neumf"] = "NeuMF"; label["bpr"] = "MF + BPR"; label["softmax"] = "MF + softmax"; label["ease"] = "EASE"
             printf "| ncf %s |", label[m]
             for (j = 2; j <= 5; j++) printf " %.3f (%.3f–%.3f) |", s[m, j] / n[m], lo[m, j], hi[m, j]
             printf " %d |\n", n[m] } }' "$out/results.txt"
echo
echo "runs in $out"
