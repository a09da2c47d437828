#!/usr/bin/env bash
# The test suite, as README.md gives it. Makes libnvrtc findable (the NVRTC wheels of CUDA 12 and
# 13 in .venv-nvrtc) so the kernel-compilation tests compile every CUDA kernel with both, even on a
# machine with no GPU and no CUDA toolkit; if that cannot be set up, those tests print why they skip
# (unless SCVI_RS_REQUIRE_NVRTC=1, as CI sets, which turns the skip into a failure). Ends with one
# line summing up every test binary's results and the Python package's (scripts/python/test.sh:
# the extension built in its own venv, then pytest).
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
pylog="$(mktemp)"
trap 'rm -f "$log" "$pylog"' EXIT
status=0
cargo test --release --lib --bins --tests --examples "$@" 2>&1 | tee "$log" || status=$?
# The Python tests use the binary that cargo test built (bit-identity with the command line).
py_status=0
bash scripts/python/test.sh 2>&1 | tee "$pylog" || py_status=$?
[ "$py_status" -eq 0 ] || status=$py_status
# Tests that return early for want of a GPU or of the shared data sets print "skipped:"; libtest
# counts them as passed, so they are moved to the skipped column here (ignored tests too).
# pytest's closing line ("3 passed, 1 skipped in 2.0s", "1 failed, 2 passed, 1 error in ...") and
# its own skip notice when no Python is there.
py="$(awk '/ in [0-9.]+s/ && /(passed|failed|skipped|error)/ { line = $0 } /^skipped: / { s += 1 }
     END { n = split(line, w, /[ ,=]+/); for (i = 2; i <= n; i++) { if (w[i] ~ /^passed/) p += w[i-1];
           if (w[i] ~ /^(failed|error)/) f += w[i-1]; if (w[i] ~ /^skipped/) s += w[i-1] }
           printf "%d %d %d", p, f, s }' "$pylog")"
read -r py_p py_f py_s <<<"$py"
# A venv or an extension that failed to build is a failure, though no test ran to say so.
if [ "$py_status" -ne 0 ] && [ "$py_f" -eq 0 ]; then
  py_f=1
  echo "the Python package could not be built or tested (exit $py_status): counted as 1 failure" >&2
fi
awk -v pp="$py_p" -v pf="$py_f" -v ps="$py_s" '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) g += $i } }
     /skipped: / { s += 1 }
     END { printf "\nTotal: %d passed, %d failed, %d skipped\n", p - s + pp, f + pf, g + s + ps }' "$log"
exit "$status"
