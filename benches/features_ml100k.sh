#!/usr/bin/env bash
# Side features on MovieLens 100K (u.user: age, gender, occupation; u.item: release date and 19
# genre flags; zip codes, titles and URLs are skipped as identifier-like), with and without them,
# best/ chosen on validation, same seeds:
#   (a) the paper protocol (leave-one-out, sampled HR@10 / NDCG@10) with a preset;
#   (b) a cold-start split: the users whose id ends in 3 (10 %) are held out entirely; the model
#       trains on the other 90 % (leave-one-out, chosen on validation) and recommends top-10 for
#       the held-out users from their u.user line (`--user-features`), against the popularity
#       fallback a model without features gives them. Recall@10 = hits / the user's ratings, every
#       rating an implicit positive. Warm users' test metrics at the chosen epoch are printed too.
#
# usage: benches/features_ml100k.sh [CONFIG] [SEEDS]   (default configs/ml-100k-gmf.toml, "1 2 3")
# env: NCF (binary; default $CARGO_TARGET_DIR/release/ncf or target/release/ncf)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
NCF=${NCF:-${CARGO_TARGET_DIR:-$HERE/../target}/release/ncf}
DATA=$HERE/../../shared/data/ml-100k
CONFIG=${1:-$HERE/../configs/ml-100k-gmf.toml}
SEEDS=${2:-1 2 3}
[ -x "$NCF" ] || { echo "not found: $NCF (cargo build --release -p ncf-trainer)" >&2; exit 1; }
[ -f "$DATA/u.data" ] || { echo "skip: $DATA not found" >&2; exit 0; }
SCRATCH=$(mktemp -d); trap 'rm -rf "$SCRATCH"' EXIT

FEATURES=(--user-features "$DATA/u.user" --item-features "$DATA/u.item")
awk -F'\t' '$1 % 10 != 3' "$DATA/u.data" > "$SCRATCH/warm.data"
awk -F'\t' '$1 % 10 == 3 { print $1 }' "$DATA/u.data" | sort -u > "$SCRATCH/cold_users.txt"
echo "config $(basename "$CONFIG"); cold users: $(wc -l < "$SCRATCH/cold_users.txt") of $(cut -f1 "$DATA/u.data" | sort -u | wc -l)"

# The chosen epoch's validation and test HR@10 / NDCG@10 of a run (its metrics.csv, best by
# validation HR@10 as the presets choose).
best() {
  python3 - "$1/metrics.csv" <<'PY'
import csv, sys
rows = [r for r in csv.DictReader(l for l in open(sys.argv[1]) if not l.startswith('#'))]
rows = [r for r in rows if r.get('valid_hr@10')]
b = max(rows, key=lambda r: float(r['valid_hr@10']))
print(f"epoch {b['epoch']:>3}  valid hr {float(b['valid_hr@10']):.4f} ndcg {float(b['valid_ndcg@10']):.4f}  test hr {float(b['test_hr@10']):.4f} ndcg {float(b['test_ndcg@10']):.4f}")
PY
}

# Recall@10 of the cold users' recommendations against all their ratings, and the sources.
cold_recall() {
  python3 - "$1" "$DATA/u.data" <<'PY'
import csv, sys, collections
truth = collections.defaultdict(set)
for line in open(sys.argv[2]):
    u, i, *_ = line.split('\t'); truth[u].add(i)
got, src = collections.defaultdict(set), collections.Counter()
for r in csv.DictReader(open(sys.argv[1])):
    got[r['user']].add(r['item']); src[r['source']] += 1
rec = [len(got[u] & truth[u]) / len(truth[u]) for u in got]
print(f"cold recall@10 {sum(rec) / len(rec):.4f} over {len(rec)} users (sources: {dict(src)})")
PY
}

for seed in $SEEDS; do
  for with in no yes; do
    extra=(); [ $with = yes ] && extra=("${FEATURES[@]}")
    start=$(date +%s.%N)
    "$NCF" --quiet train --backend flex --config "$CONFIG" --seed "$seed" --out "$SCRATCH/paper-$with-$seed" "${extra[@]}"
    secs=$(echo "$(date +%s.%N) - $start" | bc)
    echo "(a) paper protocol  seed $seed  features $with  $(best "$SCRATCH/paper-$with-$seed")  (${secs%.*} s)"
  done
done
for seed in $SEEDS; do
  for with in no yes; do
    extra=(); [ $with = yes ] && extra=("${FEATURES[@]}")
    "$NCF" --quiet train --backend flex --config "$CONFIG" --seed "$seed" --data "$SCRATCH/warm.data" --out "$SCRATCH/cold-$with-$seed" "${extra[@]}"
    rec=(); [ $with = yes ] && rec=(--user-features "$DATA/u.user")
    "$NCF" --quiet recommend --backend flex --checkpoint "$SCRATCH/cold-$with-$seed" --users "$SCRATCH/cold_users.txt" \
      --top-n 10 --out "$SCRATCH/cold-$with-$seed.csv" "${rec[@]}"
    echo "(b) cold start      seed $seed  features $with  warm: $(best "$SCRATCH/cold-$with-$seed")  $(cold_recall "$SCRATCH/cold-$with-$seed.csv")"
  done
done

# The ceiling the attributes leave: for the same cold users, items ranked by their popularity
# among training users who share one attribute (age decade, gender, occupation) or all three,
# against plain popularity, all over the same 90 % of users.
python3 - "$DATA" <<'PY'
import collections, sys
D = sys.argv[1]
users = {}
for l in open(f'{D}/u.user', encoding='latin-1'):
    u, a, g, o, _ = l.strip().split('|'); users[u] = (int(a) // 10, g, o)
train, truth = collections.defaultdict(set), collections.defaultdict(set)
for l in open(f'{D}/u.data'):
    u, i, *_ = l.split('\t'); truth[u].add(i)
    if int(u) % 10 != 3: train[u].add(i)
cold = [u for u in truth if int(u) % 10 == 3]
def recall(rank):
    return sum(len(set(i for i, _ in rank(u).most_common(10)) & truth[u]) / len(truth[u]) for u in cold) / len(cold)
pop = collections.Counter(i for s in train.values() for i in s)
out = [f"popularity {recall(lambda u: pop):.4f}"]
for j, name in enumerate(['age decade', 'gender', 'occupation', 'all three']):
    key = (lambda u: users[u]) if j == 3 else (lambda u, j=j: users[u][j])
    by = collections.defaultdict(collections.Counter)
    for u, s in train.items(): by[key(u)].update(s)
    out.append(f"{name} {recall(lambda u: by[key(u)] + collections.Counter({i: 1e-6 * c for i, c in pop.items()})):.4f}")
print("(b) cold recall@10 of popularity among users sharing: " + ", ".join(out))
PY
