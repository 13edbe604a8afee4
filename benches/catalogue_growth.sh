#!/usr/bin/env bash
# Per-step training time at 1M items against 10k items (NeuMF factor 8, batch 4096, flex), ncf
# alone. Each round is one `ncf bench --items 10000,1000000`, whose repetitions at the two
# catalogues take turns: this VM's speed drifts by 10–30 % within minutes, and turns put both
# catalogues under the same drift. Prints every round's ratio of medians and their median.
#
# usage: benches/catalogue_growth.sh [ROUNDS]          (default 10)
# env:   NCF    prebuilt binary (default $CARGO_TARGET_DIR/release/ncf, else target/release/ncf)
#        REPS   repetitions per catalogue in a round (default 5)
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

echo "round  ${small} items ms/step  ${large} items ms/step  ratio"
ratios=()
for r in $(seq 1 "$rounds"); do
    # growth flex neumf batch 4096 items A -> B: ncf per-step time xR (X -> Y ms/step)
    line=$("$NCF" bench --backends flex --models neumf --only train --workload ml-1m --users 6040 --items "$small,$large" \
        --batch 4096 --reps "${REPS:-5}" "${steps[@]}" --out "$out" | grep '^growth flex neumf')
    read -r a b ratio <<< "$(awk '{ sub(/\(/, "", $14); printf "%s %s %.3f\n", $14, $16, $16 / $14 }' <<< "$line")"
    ratios+=("$ratio")
    printf "%5d  %17s  %17s  %.3f\n" "$r" "$a" "$b" "$ratio"
done
printf "%s\n" "${ratios[@]}" | sort -n | awk '{ v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    within = 0; for (i = 1; i <= NR; i++) if (v[i] <= 1.2) within++
    printf "median ratio %.3f over %d rounds (min %.3f, max %.3f); %d of %d rounds within 1.2\n", m, NR, v[1], v[NR], within, NR
}'
