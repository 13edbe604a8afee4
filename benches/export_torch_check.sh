#!/usr/bin/env bash
# `ncf export --to torch` checked from the Python side. For each model kind (GMF, MLP, NeuMF, MF
# with BPR, and two cosine models: NeuMF with sampled softmax, MF with CCL and folded history) it
# trains a small model on the built-in demo data, exports it, and has python/ncf_torch.py
# recompute what `ncf score` wrote for every (user, item) pair, through `score` (pairs) and
# `score_all` (each user against the catalogue). Fails when a largest |diff| is above 1e-5;
# prints a skip and exits 0 when $PYTHON cannot import torch.
#
#   benches/export_torch_check.sh
#   PYTHON=/root/venvs/torch/bin/python benches/export_torch_check.sh
#
# env: PYTHON (default python3), NCF (a prebuilt ncf binary; default: cargo build --release),
#      WORK (scratch directory, default /tmp/ncf-export-check; replaced on each run)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WORK=${WORK:-/tmp/ncf-export-check}
if ! "$PYTHON" -c 'import torch' 2>/dev/null; then
  echo "skip: $PYTHON cannot import torch; set PYTHON to a python with PyTorch to check the torch export"
  exit 0
fi
if [ -z "${NCF:-}" ]; then
  cargo build --release -p ncf-trainer
  NCF=${CARGO_TARGET_DIR:-target}/release/ncf
fi
rm -rf "$WORK"
mkdir -p "$WORK"
USERS=200
ITEMS=300
"$PYTHON" - <<'EOF'
import importlib.util, sys, torch
reader = "the safetensors package" if importlib.util.find_spec("safetensors") else "ncf_torch's own reader (no safetensors package)"
print(f"python {sys.version.split()[0]}, torch {torch.__version__}; weights read with {reader}")
EOF
# Every (user, item) pair of the demo catalogue (raw ids 1..N).
awk -v u=$USERS -v i=$ITEMS 'BEGIN { print "user,item"; for (a = 1; a <= u; a++) for (b = 1; b <= i; b++) print a "," b }' >"$WORK/pairs.csv"

failed=0
# check NAME MODEL [--set KEY=VALUE ...]: train, export, score, compare.
check() {
  local name=$1 model=$2
  shift 2
  local run=$WORK/$name
  local train=("$NCF" train -q --backend flex --model "$model" --epochs 3 --seed 7
    --set data.demo.users=$USERS --set data.demo.items=$ITEMS --set data.demo.max_per_user=60
    --set model.factors=16 --set "model.layers=[32,16,8]" --set model.init_std=0.1 "$@" --out "$run")
  echo "== $name: ncf ${train[*]:1}"
  "${train[@]}"
  "$NCF" export -q --checkpoint "$run" --to torch --out "$run/torch"
  "$NCF" score -q --backend flex --checkpoint "$run" --pairs "$WORK/pairs.csv" --out "$run/scores.csv" >/dev/null
  PYTHONPATH=python "$PYTHON" - "$name" "$run/torch" "$run/scores.csv" <<'EOF' || failed=1
import csv, sys, torch, ncf_torch
name, export, scores = sys.argv[1:]
net = ncf_torch.load(export)
with open(scores, newline="") as f:
    rows = list(csv.reader(f))
column, rows = rows[0][2], rows[1:]
users, items = [r[0] for r in rows], [r[1] for r in rows]
want = torch.tensor([float(r[2]) for r in rows], dtype=torch.float64)
pairs = (net.score(users, items).double() - want).abs().max().item()
everything = net.score_all(net.user_ids).double()
rows_of = lambda ids, order: torch.tensor([order[x] for x in ids])
u = rows_of(users, {x: k for k, x in enumerate(net.user_ids)})
i = rows_of(items, {x: k for k, x in enumerate(net.item_ids)})
catalogue = (everything[u, i] - want).abs().max().item()
ok = max(pairs, catalogue) <= 1e-5
spread = f"{column} {want.min().item():.4g} to {want.max().item():.4g}"
print(f"{name}: {len(rows)} pairs ({spread}): max |diff| score() {pairs:.2e}, score_all() {catalogue:.2e} -> {'ok' if ok else 'FAILED (> 1e-5)'}")
sys.exit(0 if ok else 1)
EOF
}

check gmf gmf
check mlp mlp
check neumf neumf
check mf-bpr mf --set train.loss=bpr --set sampler.negatives=1
check neumf-cosine-softmax neumf --set model.cosine=true --set train.loss=softmax --set sampler.shared_negatives=64
check mf-cosine-ccl-history mf --set model.cosine=true --set model.history=0.3 --set train.loss=ccl \
  --set sampler.shared_negatives=64 --set loss.margin=0.5
if [ $failed -ne 0 ]; then
  echo "FAILED: a torch export does not reproduce ncf score within 1e-5"
  exit 1
fi
echo "all torch exports reproduce ncf score within 1e-5"
