#!/usr/bin/env bash
# Top-10 recommendations, training items masked, for every user of a 29,858-user × 40,981-item
# factor-64 model on the CPU backend (flex), side by side with the PyTorch peer
# ../shared/tools/torch_recommend.py (chunked matmul + topk on the same shape). Prints wall time
# and peak memory (max RSS from /usr/bin/time -v) of both whole processes, and the ratios.
#
#   benches/recommend_vs_torch.sh            # MF (the peer's model: dot product)
#   MODEL=gmf benches/recommend_vs_torch.sh  # GMF, or MODEL=neumf (scored through its MLP tower)
#
# The checkpoint comes from one epoch on the built-in demo data sized like the peer (popularity skew
# off; 40,980 of the 40,991 drawn items occur; 20–36 items per user: 806,563 training pairs vs the
# peer's 810,128 random ones); it is kept in $WORK.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-mf}
WORK=${WORK:-/tmp/ncf-recommend-bench}
TOP_N=${TOP_N:-10}
if [ -z "${PYTHON:-}" ]; then
  if [ -x /root/venv-torch/bin/python ]; then PYTHON=/root/venv-torch/bin/python; else PYTHON=python3; fi
fi
PEER=../shared/tools/torch_recommend.py
cargo build --release -p ncf-trainer
NCF=${CARGO_TARGET_DIR:-target}/release/ncf
mkdir -p "$WORK"
RUN=$WORK/$MODEL
if [ ! -f "$RUN/best/checkpoint.json" ]; then
  echo "== training a $MODEL checkpoint (29858 users x 40981 items, factor 64, 1 epoch) into $RUN"
  "$NCF" train --backend flex --model "$MODEL" --epochs 1 --out "$RUN" \
    --set data.demo.users=29858 --set data.demo.items=40991 --set data.demo.popularity_skew=0 \
    --set data.demo.min_per_user=20 --set data.demo.max_per_user=36 \
    --set model.factors=64 --set train.full_ranking=false --set train.batch_size=4096 \
    --set sampler.negatives=1 --set train.eval_negatives=10 | grep -E "^(data|epoch)"
fi

# Runs a command under /usr/bin/time -v; prints its output, then "SECONDS MAX_RSS_KB" to fd 3.
measure() {
  local log; log=$(mktemp)
  /usr/bin/time -v "$@" 2>"$log" | grep -vE "^(backend|probability)" || true
  awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; t = s }
              /Maximum resident set size/ { m = $2 }
              /Exit status/ { e = $2 }
              END { if (e != 0) { print "command failed" > "/dev/stderr"; exit 1 } print t, m }' "$log" >&3
  rm -f "$log"
}

exec 3>"$WORK/ncf.txt"
echo "== ncf recommend ($MODEL, flex, top-$TOP_N, training items masked, all users)"
measure "$NCF" recommend --backend flex --checkpoint "$RUN" --top-n "$TOP_N" --out "$WORK/recs-$MODEL.csv"
exec 3>"$WORK/torch.txt"
echo "== PyTorch peer ($PEER, $PYTHON)"
measure "$PYTHON" "$PEER"
exec 3>&-
read -r NCF_S NCF_KB <"$WORK/ncf.txt"
read -r PT_S PT_KB <"$WORK/torch.txt"
awk -v a="$NCF_S" -v b="$NCF_KB" -v c="$PT_S" -v d="$PT_KB" -v m="$MODEL" 'BEGIN {
  printf "%-22s %8s %12s\n", "", "wall s", "max RSS MiB"
  printf "%-22s %8.2f %12.0f\n", "ncf recommend (" m ")", a, b / 1024
  printf "%-22s %8.2f %12.0f\n", "PyTorch (MF)", c, d / 1024
  printf "ncf/PyTorch: time %.2fx, peak memory %.2fx\n", a / c, b / d }'
