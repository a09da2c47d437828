#!/usr/bin/env bash
# The test suite, as README.md gives it. Makes libnvrtc findable (a pip wheel in a venv) so that the
# kernel-compilation test checks every CUDA kernel even on a machine without a GPU or CUDA toolkit;
# if that cannot be set up, that one test prints why it skips.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f scripts/ci/setup_nvrtc.sh ]; then
  # shellcheck disable=SC1091
  source scripts/ci/setup_nvrtc.sh || echo "note: NVRTC could not be set up; the kernel compile test will skip"
fi
cargo test --release "$@"
