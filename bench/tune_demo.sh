#!/usr/bin/env bash
# Tuning benchmark on configs/demo_tuning.yaml (BENCHMARKS.md, "Tuning"):
#  1. the untuned arm (real-ce) over 3 seeds:        synthaug run
#  2. search (SQLite, 1 worker) + retrain, 3 seeds:  synthaug tune      -> tuned-real-ce in the same report
#  3. search throughput, 1 vs 2 workers on one PostgreSQL study (no pruning, a smaller search: 6 trials ×
#     3 epochs, so both do the same 18 epochs)
# Every process runs with one torch thread unless stated (OMP_NUM_THREADS=1; the 1-worker timing uses 2).
# Needs Debian's postgresql package (initdb/pg_ctl); as root the server runs as the `postgres` user.
# Usage: bash bench/tune_demo.sh [OUTPUT_DIR]   (default runs/bench-tune; finished stages in it are reused)
set -euo pipefail
OUT=${1:-runs/bench-tune}
BIN=${BIN:-.venv/bin}
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
SEEDS='seeds=[0,1,2]'
now() { date +%s.%N; }
lscpu | grep 'Model name'
echo "cores: $(nproc --all); $(uptime)"

t0=$(now)
"$BIN/synthaug" train configs/demo_tuning.yaml --arm real-ce --set output_dir="$OUT" --set "$SEEDS" --set progress=false \
    > "$OUT/untuned.log" 2>&1
t1=$(now)
"$BIN/synthaug" tune configs/demo_tuning.yaml --set output_dir="$OUT" --set "$SEEDS" --set progress=false --threads 1 \
    > "$OUT/tune.log" 2>&1
t2=$(now)
echo "untuned run (3 seeds x 12 epochs): $(echo "$t1 - $t0" | bc) s"
echo "tune, SQLite, 1 worker (12 trials x 6 epochs + retrain 3 seeds x 12 epochs): $(echo "$t2 - $t1" | bc) s"
grep -E "^\| (real-ce|tuned-real-ce) " "$OUT/demo-tuning/report/results.md"
grep -E "^(Best|  train\.|Retrained)" "$OUT/tune.log"

# --- a throw-away PostgreSQL server
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PGDIR=$(mktemp -d /tmp/bench-pg-XXXX)
AS=()
if [ "$(id -u)" = 0 ]; then chown postgres "$PGDIR"; AS=(runuser -u postgres --); fi
"${AS[@]}" "$PGBIN/initdb" -D "$PGDIR/data" -U synthaug --auth=trust --no-sync > /dev/null
PORT=55432
"${AS[@]}" "$PGBIN/pg_ctl" -D "$PGDIR/data" -o "-p $PORT -k $PGDIR -c listen_addresses=127.0.0.1" -l "$PGDIR/log" -w start > /dev/null
trap '"${AS[@]}" "$PGBIN/pg_ctl" -D "$PGDIR/data" -m fast -w stop > /dev/null; rm -rf "$PGDIR"' EXIT
PG="postgresql://synthaug@127.0.0.1:$PORT/postgres"

COMMON=(--storage "$PG" --no-retrain --set output_dir="$OUT" --set tune.pruner=none --set progress=false
        --set tune.n_trials=6 --set tune.epochs=3 --set tune.last_k=2)
t3=$(now)
"$BIN/synthaug" tune configs/demo_tuning.yaml "${COMMON[@]}" --study one-worker --set name=w1 --threads 2 \
    > "$OUT/w1.log" 2>&1
t4=$(now)
"$BIN/synthaug" tune configs/demo_tuning.yaml "${COMMON[@]}" --study two-workers --set name=w2 --local-workers 2 > "$OUT/w2a.log" 2>&1 &
"$BIN/synthaug" tune configs/demo_tuning.yaml "${COMMON[@]}" --study two-workers --set name=w2 --local-workers 2 > "$OUT/w2b.log" 2>&1
wait
t5=$(now)
echo "search only, PostgreSQL, 1 worker x 2 threads: $(echo "$t4 - $t3" | bc) s"
echo "search only, PostgreSQL, 2 workers x 1 thread: $(echo "$t5 - $t4" | bc) s"
echo "load: $(uptime)"
for f in w1 w2a w2b; do echo "$f: $(grep -c ' COMPLETE ' "$OUT/$f.log") trials completed by this worker; $(grep -m1 'torch thread' "$OUT/$f.log")"; done
