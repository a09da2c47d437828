#!/usr/bin/env bash
# The test suite, as README.md gives it. Makes libnvrtc findable (the NVRTC wheels of CUDA 12 and
# 13 in .venv-nvrtc) so the kernel-compilation tests compile every CUDA kernel with both, even on a
# machine with no GPU and no CUDA toolkit; if that cannot be set up, those tests print why they skip
# (unless SCVI_RS_REQUIRE_NVRTC=1, as CI sets, which turns the skip into a failure). Ends with one
# line summing up every test binary's results.
set -euo pipefail
cd "$(dirname "$0")/.."
if dir="$(bash scripts/ci/setup_nvrtc.sh 12)"; then
  export SCVI_RS_CUDA_LIB_DIR="$dir" SCVI_RS_NVRTC12_DIR="$dir"
else
  echo "note: NVRTC 12 could not be set up; the kernel compile tests will skip" >&2
fi
if dir="$(bash scripts/ci/setup_nvrtc.sh 13)"; then
  export SCVI_RS_NVRTC13_DIR="$dir"
else
  echo "note: NVRTC 13 could not be set up; its compile test will skip" >&2
fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --lib --bins --tests --examples "$@" 2>&1 | tee "$log" || status=$?
# Tests that return early for want of a GPU or of the shared data sets print "skipped:"; libtest
# counts them as passed, so they are moved to the skipped column here (ignored tests too).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) g += $i } }
     /skipped: / { s += 1 }
     END { printf "\nTotal: %d passed, %d failed, %d skipped\n", p - s, f, g + s }' "$log"
exit "$status"
