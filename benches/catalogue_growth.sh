#!/usr/bin/env bash
# Per-step training time at 1M items against 10k items (NeuMF factor 8, batch 4096, flex), in
# alternated rounds: this VM's speed drifts by about 10 % within minutes, so each round runs the
# two catalogues back to back and the ratio is taken per round. Prints every round and the median.
#
# usage: benches/catalogue_growth.sh [ROUNDS]          (default 10)
# env:   NCF    prebuilt binary (default $CARGO_TARGET_DIR/release/ncf, else target/release/ncf)
#        STEPS  training steps per repetition (default: the ml-1m workload's 16; more steps also
#               cover rows coming back after long gaps, as in a long run)
#        ITEMS  the two catalogues (default "10000 1000000")
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
NCF=${NCF:-${CARGO_TARGET_DIR:-$root/target}/release/ncf}
rounds=${1:-10}
read -r small large <<< "${ITEMS:-10000 1000000}"
[ -x "$NCF" ] || { echo "error: no ncf binary at $NCF (cargo build --release -p ncf-trainer, or set NCF)" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
steps=()
[ -n "${STEPS:-}" ] && steps=(--steps "$STEPS")

# ms/step of one run: `flex neumf train b=4096 ... <median> ms/step`
ms() {
    "$NCF" bench --backends flex --models neumf --only train --workload ml-1m --users 6040 --items "$1" \
        --batch 4096 --reps 3 "${steps[@]}" --out "$out" | awk '/ neumf .*ms\/step/ { for (i = 1; i < NF; i++) if ($(i + 1) == "ms/step") print $i }'
}

echo "round  ${small} items ms/step  ${large} items ms/step  ratio"
ratios=()
for r in $(seq 1 "$rounds"); do
    a=$(ms "$small")
    b=$(ms "$large")
    ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", b / a }')
    ratios+=("$ratio")
    printf "%5d  %17s  %17s  %.3f\n" "$r" "$a" "$b" "$ratio"
done
printf "%s\n" "${ratios[@]}" | sort -n | awk '{ v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    within = 0; for (i = 1; i <= NR; i++) if (v[i] <= 1.2) within++
    printf "median ratio %.3f over %d rounds (min %.3f, max %.3f); %d of %d rounds within 1.2\n", m, NR, v[1], v[NR], within, NR
}'
