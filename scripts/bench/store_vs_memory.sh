#!/usr/bin/env bash
# Training from a memory-mapped store against training from memory (issue 4): the same simulated
# 1M cells x 2,000 genes, the same seed and steps, one after the other on this machine; cells/s from
# the run's history (seconds of the timed steps) and peak RSS from /usr/bin/time. A 100k-cell store
# shows that peak RSS does not grow with the number of cells.
#
#   bash scripts/bench/store_vs_memory.sh [DIR] [STEPS] [THREADS]
# DIR holds (or receives) sim1m.store, sim1m.h5ad and sim100k.store.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir="${1:-/tmp/bench}"; steps="${2:-800}"; threads="${3:-2}"
exe="${SCVI_RS:-target/release/scvi-rs}"
mkdir -p "$dir"
[ -d "$dir/sim1m.store" ] || $exe simulate --cells 1000000 --genes 2000 --batches 4 --seed 0 --out "$dir/sim1m.store"
[ -f "$dir/sim1m.h5ad" ] || $exe simulate --cells 1000000 --genes 2000 --batches 4 --seed 0 --out "$dir/sim1m.h5ad"
[ -d "$dir/sim100k.store" ] || $exe simulate --cells 100000 --genes 2000 --batches 4 --seed 0 --out "$dir/sim100k.store"
run() {  # name input
  local log="$dir/$1.time"
  /usr/bin/time -v $exe train "$2" --batch-key batch --max-epochs 1 --max-steps "$steps" --train-size 1.0 \
    --threads "$threads" --device cpu --out "$dir/model_$1" --force --quiet 2> "$log"
  local secs rss
  secs=$(awk -F, 'NR==2 {print $13}' "$dir/model_$1/history.csv")
  rss=$(awk '/Maximum resident set size/ {print $6}' "$log")
  wall=$(awk '/Elapsed \(wall clock\)/ {print $8}' "$log")
  printf '%-14s %8d steps %10.1f cells/s (training only) %8.0f MB peak RSS  wall %s\n' \
    "$1" "$steps" "$(echo "$steps * 128 / $secs" | bc -l)" "$(echo "$rss / 1024" | bc -l)" "$wall"
}
run store_1m "$dir/sim1m.store"
run memory_1m "$dir/sim1m.h5ad"
run store_100k "$dir/sim100k.store"
