#!/usr/bin/env bash
# ncf against pandas on the same interaction file, in one run: load, dense ids, duplicate pairs
# dropped (latest kept), leave-one-out split. Each side runs as its own process under
# /usr/bin/time -v; printed: wall seconds, peak memory (max RSS) and the ncf/pandas ratios.
#
#   ncf:    ncf data split FILE --no-write --set data.clean.min_user_interactions=2
#           read + ids + dedupe + k-core (users with one interaction cannot be split leave-one-out,
#           so ncf drops them; pandas keeps them as test-only users) + leave-one-out + the
#           100 sampled evaluation negatives per test user; nothing written.
#   pandas: ../shared/tools/pandas_loo.py FILE  (read_csv, factorize, drop_duplicates(keep='last'),
#           sort by user and time, last row per user is test)
#
# usage: benches/data_vs_pandas.sh FILE
#   e.g. python ../shared/tools/gen_20m.py (in a scratch folder) && benches/data_vs_pandas.sh ratings20m.csv
# env: NCF (binary; default $CARGO_TARGET_DIR/release/ncf or target/release/ncf),
#      PYTHON (default /root/venv-torch/bin/python), PANDAS_LOO (the peer script).
set -euo pipefail

FILE=${1:?usage: benches/data_vs_pandas.sh FILE}
HERE=$(cd "$(dirname "$0")" && pwd)
NCF=${NCF:-${CARGO_TARGET_DIR:-$HERE/../target}/release/ncf}
PYTHON=${PYTHON:-/root/venv-torch/bin/python}
PANDAS_LOO=${PANDAS_LOO:-$HERE/../../shared/tools/pandas_loo.py}
for f in "$FILE" "$NCF" "$PANDAS_LOO"; do
  [ -e "$f" ] || { echo "not found: $f" >&2; exit 1; }
done
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# measure NAME CMD...: runs CMD under /usr/bin/time -v; sets SECS and RSS_KB.
measure() {
  local name=$1; shift
  /usr/bin/time -v "$@" >"$TMP/$name.out" 2>"$TMP/$name.time" || { cat "$TMP/$name.out" "$TMP/$name.time" >&2; exit 1; }
  SECS=$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$TMP/$name.time")
  RSS_KB=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$TMP/$name.time")
  sed 's/^/  /' "$TMP/$name.out"
  printf '%-7s %7.2f s  peak RSS %6.0f MiB\n' "$name" "$SECS" "$(echo "$RSS_KB / 1024" | bc -l)"
}

cat "$FILE" >/dev/null # both sides start with the file in the page cache
echo "file: $FILE ($(du -h "$FILE" | cut -f1)), $(nproc) cores, $(date -u '+%Y-%m-%d %H:%M UTC')"
measure ncf "$NCF" data split "$FILE" --no-write --set data.clean.min_user_interactions=2
NCF_S=$SECS NCF_KB=$RSS_KB
measure pandas "$PYTHON" "$PANDAS_LOO" "$FILE"
PD_S=$SECS PD_KB=$RSS_KB
printf 'ratio ncf/pandas: time %.2f, peak memory %.2f\n' "$(echo "$NCF_S / $PD_S" | bc -l)" "$(echo "$NCF_KB / $PD_KB" | bc -l)"
