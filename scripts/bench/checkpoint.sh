#!/usr/bin/env bash
# What checkpoints cost (issue 10), on Kang (13,576 cells x 2,000 genes) with the default model:
# the size of checkpoint.safetensors and the time to write one (as `train` reports it: the
# engine's state read back, serialised, written under a temporary name, synced and renamed), the
# overhead of --checkpoint-every 1, and what `train --resume` costs beyond a fresh start (reading
# the checkpoint, checking the data's fingerprint).
#
# Each run's time outside its epochs (wall time minus the epochs' `seconds` in history.csv: the
# data loading, set-up, checkpoints, the model's writing) is compared, so that the epochs' own
# variance on a busy machine does not swamp what is measured.
#
#   bash scripts/bench/checkpoint.sh [DATA] [EPOCHS] [THREADS] [DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
data="${1:-../shared/data/kang_ifnb_hvg2k.h5ad}"; epochs="${2:-3}"; threads="${3:-2}"
dir="${4:-/tmp/bench-checkpoint}"
exe="${SCVI_RS:-target/release/scvi-rs}"
mkdir -p "$dir"
flags=(--batch-key stim --max-epochs "$epochs" --threads "$threads" --device cpu --seed 0)
now() { date +%s.%N; }
outside() {  # wall seconds, model dir, epochs this process ran: the seconds not in its epochs
  echo "$1 - $(awk -F, -v k="$3" 'NR > 1 {r[NR] = $13} END {for (i = NR - k + 1; i <= NR; i++) s += r[i]; print s}' "$2/history.csv")" | bc -l
}
run() {  # name, epochs it runs, command...: prints wall seconds and the seconds outside the epochs
  local name=$1 ran=$2; shift 2
  local t0; t0=$(now)
  "$@" 2> "$dir/$name.log"
  local wall; wall=$(echo "$(now) - $t0" | bc -l)
  printf '%.2f %.2f\n' "$wall" "$(outside "$wall" "$dir/$name" "$ran")"
}

read -r plain_wall plain_out < <(run plain "$epochs" "$exe" train "$data" "${flags[@]}" --out "$dir/plain" --force)
read -r every_wall every_out < <(run every "$epochs" "$exe" train "$data" "${flags[@]}" --out "$dir/every" --force --checkpoint-every 1)
n=$((epochs - 1))   # no checkpoint after the last epoch: the model is written instead
echo "--checkpoint-every 1: $(grep 'last checkpoint' "$dir/every.log")"
printf 'fresh run, %d epochs:                 wall %6.2f s, outside the epochs %5.2f s\n' "$epochs" "$plain_wall" "$plain_out"
printf -- '--checkpoint-every 1, %d checkpoints: wall %6.2f s, outside the epochs %5.2f s: %+.2f s per checkpoint\n' \
  "$n" "$every_wall" "$every_out" "$(echo "($every_out - $plain_out) / $n" | bc -l)"
awk -F, 'NR > 1 {s += $13; n++} END {printf "an epoch: %.2f s on average\n", s / n}' "$dir/plain/history.csv"

# A run killed (SIGKILL, at its 2nd checkpoint write) leaves the checkpoint after epoch 1.
rm -rf "$dir/resumed"
(SCVI_RS_TEST_KILL_IN_CHECKPOINT=2 "$exe" train "$data" "${flags[@]}" --out "$dir/resumed" \
  --checkpoint-every 1 --quiet) 2> /dev/null || true
ls -l "$dir/resumed/checkpoint.safetensors" | awk '{printf "checkpoint.safetensors: %.2f MB\n", $5 / 1e6}'
read -r resume_wall resume_out < <(run resumed "$((epochs - 1))" "$exe" train --resume "$dir/resumed" --threads "$threads" --quiet)
cmp "$dir/resumed/model.safetensors" "$dir/plain/model.safetensors" && echo "resumed model = uninterrupted model, bit for bit"
printf 'train --resume (epochs 2..%d): wall %.2f s, outside the epochs %.2f s: %+.2f s more than a fresh start\n' \
  "$epochs" "$resume_wall" "$resume_out" "$(echo "$resume_out - $plain_out" | bc -l)"
