#!/usr/bin/env bash
# The test suite, as README.md gives it. Makes libnvrtc findable (the nvidia-cuda-nvrtc-cu12 wheel
# in .venv-nvrtc) so the kernel-compilation test compiles every CUDA kernel even on a machine with
# no GPU and no CUDA toolkit; if that cannot be set up, that test prints why it skips (unless
# SCVI_RS_REQUIRE_NVRTC=1, as CI sets, which turns the skip into a failure).
set -euo pipefail
cd "$(dirname "$0")/.."
if dir="$(bash scripts/ci/setup_nvrtc.sh)"; then
  export SCVI_RS_CUDA_LIB_DIR="$dir"
else
  echo "note: NVRTC could not be set up; the kernel compile test will skip" >&2
fi
cargo test --release "$@"
