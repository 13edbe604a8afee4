#!/usr/bin/env bash
# Inputs split into Parquet parts at scale: the 20M-row file of ../shared/tools/gen_20m.py (same
# generator, same rows) written as 8 Parquet parts plus Spark's _SUCCESS marker, then read as a
# directory by `ncf data stats DIR` and `ncf data split DIR --no-write`, and, for the reference,
# the same rows as one CSV file by `ncf data split FILE --no-write`. Each command runs as its own
# process under /usr/bin/time -v; printed: wall seconds and peak memory (max RSS).
#
# usage: benches/parts_20m.sh [SCRATCH_DIR]     (default: a temporary directory, removed after)
# env: NCF (binary; default $CARGO_TARGET_DIR/release/ncf or target/release/ncf),
#      PYTHON (a Python with numpy and pyarrow; default python3).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
NCF=${NCF:-${CARGO_TARGET_DIR:-$HERE/../target}/release/ncf}
PYTHON=${PYTHON:-python3}
[ -x "$NCF" ] || { echo "not found: $NCF (cargo build --release -p ncf-trainer)" >&2; exit 1; }
"$PYTHON" -c 'import numpy, pyarrow' 2>/dev/null || { echo "skip: $PYTHON lacks numpy or pyarrow" >&2; exit 0; }
if [ -n "${1:-}" ]; then SCRATCH=$1; mkdir -p "$SCRATCH"; else SCRATCH=$(mktemp -d); trap 'rm -rf "$SCRATCH"' EXIT; fi

if [ ! -e "$SCRATCH/parts/_SUCCESS" ]; then
  "$PYTHON" - "$SCRATCH" <<'PY'
import sys, numpy as np, pyarrow as pa, pyarrow.parquet as pq, pyarrow.csv as pc, os
out = sys.argv[1]
# gen_20m.py's generator, draw for draw.
rng = np.random.default_rng(0); N = 20_000_000; NU, NI = 138_493, 26_744
u = (rng.pareto(1.2, N) * 2000).astype(np.int64) % NU
i = (rng.pareto(1.0, N) * 300).astype(np.int64) % NI
ts = rng.integers(789652009, 1427784002, N)
r = rng.integers(1, 11, N) / 2
t = pa.table({'userId': u + 1, 'movieId': i + 1, 'rating': r, 'timestamp': ts})
os.makedirs(f'{out}/parts', exist_ok=True)
step = N // 8
for k in range(8):
    pq.write_table(t.slice(k * step, step), f'{out}/parts/part-{k:05d}-20m.snappy.parquet', compression='snappy')
pc.write_csv(t, f'{out}/ratings20m.csv')
open(f'{out}/parts/_SUCCESS', 'w').close()
PY
fi
du -sh "$SCRATCH/parts" "$SCRATCH/ratings20m.csv"

measure() {
  local name=$1; shift
  local log="$SCRATCH/${name//[^a-z0-9]/_}"
  /usr/bin/time -v "$@" >"$log.out" 2>"$log.time" || { cat "$log.out" "$log.time" >&2; exit 1; }
  local secs rss
  secs=$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$log.time")
  rss=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$log.time")
  printf '%-22s %7.2f s  peak RSS %6.0f MiB\n' "$name" "$secs" "$(echo "$rss / 1024" | bc -l)"
}
cat "$SCRATCH"/parts/* "$SCRATCH/ratings20m.csv" >/dev/null # all from the page cache
measure "stats parts/" "$NCF" data stats "$SCRATCH/parts"
sed -n 1,3p "$SCRATCH/stats_parts_.out"
measure "split parts/" "$NCF" data split "$SCRATCH/parts" --no-write --set data.clean.min_user_interactions=2
measure "split ratings20m.csv" "$NCF" data split "$SCRATCH/ratings20m.csv" --no-write --set data.clean.min_user_interactions=2
measure "stats ratings20m.csv" "$NCF" data stats "$SCRATCH/ratings20m.csv"
